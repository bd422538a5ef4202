"""Hostile agent vs. the model gateway (issue 13 item 7), on bwrap and Docker.

The real Claude Code runs a task in a real sandbox under a real runner; the scripted
model's Bash step makes the agent talk to the gateway itself (the in-sandbox forwarder
at $ANTHROPIC_BASE_URL, with the placeholder key from its environment) and ask for what
the gateway must not forward: ``mcp_servers`` (on both routes), a beta flag the meter
cannot price, a pricing field (``service_tier``) and a 1-hour cache write. Each is
refused with a 400 in Anthropic's shape, none reaches the model (its request log), each
is a ``request_refused`` security event, and the events are in the audit log. The task
itself still succeeds: what Claude Code sends on every call is forwarded.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import sqlite3
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest

import bus as bus_module
from audit import run_audit
from bus import Finished, Security, Settings, ToolResult
from sandbox import Runner, ScriptedModelServer, build_image
from sandbox._sandboxes._image import image_folder
from sandbox._scripted import parse_script

MODEL = "claude-sonnet-4-6"
MARKER_PARTS = ("hostile", "-probe-", "7d1")  # joined only inside the sandbox
MARKER = "".join(MARKER_PARTS)

PAYLOAD = f'''
import http.client, json, os
key = os.environ["ANTHROPIC_API_KEY"]
host, port = os.environ["ANTHROPIC_BASE_URL"].split("//")[1].rstrip("/").split(":")
marker = "".join({MARKER_PARTS!r})
def body(**extra):
    return {{"model": "{MODEL}", "max_tokens": 50, "messages": [{{"role": "user", "content": marker}}], **extra}}
servers = [{{"type": "url", "url": "https://attacker.example/mcp", "name": "x"}}]
ttl = {{"role": "user", "content": [{{"type": "text", "text": marker, "cache_control": {{"type": "ephemeral", "ttl": "1h"}}}}]}}
cases = [
    ("mcp_servers", "/v1/messages?beta=true", body(mcp_servers=servers), {{}}),
    ("count_mcp_servers", "/v1/messages/count_tokens?beta=true", body(mcp_servers=servers), {{}}),
    ("beta", "/v1/messages?beta=true", body(), {{"anthropic-beta": "claude-code-20250219,context-1m-2025-08-07"}}),
    ("service_tier", "/v1/messages", body(service_tier="auto"), {{}}),
    ("ttl", "/v1/messages", dict(body(), messages=[ttl]), {{}}),
]
for name, path, payload, extra in cases:
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    headers = {{"x-api-key": key, "content-type": "application/json", "anthropic-version": "2023-06-01", **extra}}
    conn.request("POST", path, json.dumps(payload), headers)
    response = conn.getresponse()
    data = json.loads(response.read() or b"{{}}")
    print("CASE", name, response.status, data.get("type"), data.get("error", {{}}).get("type"))
'''
COMMAND = f"echo {base64.b64encode(PAYLOAD.encode()).decode()} | base64 -d | python3 -I -"
SCRIPT = f"""
[[turns]]
text = "Talking to the gateway directly."
tool_use = [{{ name = "Bash", input = {{ command = {json.dumps(COMMAND)}, description = "probe" }} }}]

[[turns]]
after_tool_result = true
text = "Probed."
"""
CASES = ("mcp_servers", "count_mcp_servers", "beta", "service_tier", "ttl")


@pytest.fixture(scope="module")
def image_cache() -> Path:
    settings = Settings.load({})
    docker_up = subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    build_image(settings, docker=docker_up)
    return image_folder(settings).parent


@contextlib.asynccontextmanager
async def audit_writer(settings: Settings, db: Path) -> AsyncIterator[None]:
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_audit(settings, db_path=db, stop=stop, ready=ready))
    try:
        async with asyncio.timeout(30):
            await asyncio.wait({task, asyncio.create_task(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        yield
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


def _audited_kinds(db: Path, task_id: str) -> list[str]:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        return [r[0] for r in conn.execute("SELECT kind FROM audit WHERE task_id = ? AND type = 'security'", (task_id,))]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()


async def _follow(b: bus_module.Bus, task_id: str, *, timeout: float = 240) -> list:
    from nats.js.api import DeliverPolicy

    sub = await b.js.subscribe(b.subjects.events(task_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    events: list = []
    try:
        async with asyncio.timeout(timeout):
            while not events or not isinstance(events[-1], Finished):
                events.append(bus_module.decode_event((await sub.next_msg(timeout=timeout)).data))
    finally:
        await sub.unsubscribe()
    return events


@pytest.mark.parametrize("backend", ["bwrap", "docker"])
async def test_an_agent_cannot_make_the_gateway_forward_what_it_does_not_understand(
    backend: str,
    settings: Settings,
    tmp_path: Path,
    bus: bus_module.Bus,
    image_cache: Path,
    request: pytest.FixtureRequest,
    require_claude: Path,
) -> None:
    request.getfixturevalue(f"require_{backend}")
    data = Path(settings.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    (data / "images").symlink_to(image_cache)
    real_key = "sk-ant-hostile-" + MARKER_PARTS[2] * 8
    scripts = {"probe": parse_script(SCRIPT, source="probe", name="probe")}
    db = tmp_path / "audit.db"
    async with ScriptedModelServer(log_path=tmp_path / "model.jsonl", required_api_key=real_key, scripts=scripts) as model:
        settings = msgspec.structs.replace(settings, upstream_url=model.url, upstream_api_key=real_key)
        async with audit_writer(settings, db):
            async with Runner(settings, backend=backend, slots=1, runner_id=f"r-hostile-gw-{backend}"):
                task_id = bus_module.new_task_id()
                task = bus_module.TaskRequest(description="[script:probe] probe the gateway")
                policy = bus_module.Policy(
                    task_id=task_id,
                    kind="task",
                    key_id="tb_test",
                    profile="test",
                    model=MODEL,
                    models=[MODEL],
                    tools=["Bash"],
                    max_cost_usd=1.0,
                    timeout_s=180,
                    memory_mb=1024,
                    pids=512,
                    disk_mb=256,
                )
                job = bus_module.Job(
                    task_id=task_id, policy=policy, request=task, signature=bus_module.sign_job(task_id, policy, task, settings.job_secret)
                )
                await bus.publish(
                    bus.subjects.events(task_id),
                    bus_module.Accepted(
                        task_id=task_id, seq=1, ts=bus_module.utcnow(), kind="task", key_id="tb_test", profile="test", model=MODEL
                    ),
                    msg_id=f"{task_id}-1",
                )
                await bus.publish(bus.subjects.jobs("task"), job, msg_id=task_id)
                events = await _follow(bus, task_id)
            refused = [e for e in events if isinstance(e, Security) and e.kind == "request_refused"]
            async with asyncio.timeout(30):
                while _audited_kinds(db, task_id).count("request_refused") < len(refused):
                    await asyncio.sleep(0.05)
        seen = model.requests()
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.status == "succeeded", finished
    output = next(e for e in events if isinstance(e, ToolResult)).output
    for case in CASES:
        assert f"CASE {case} 400 error invalid_request_error" in output, output
    # nothing of the probes reached the model; Claude Code's own calls did
    assert all(MARKER not in json.dumps(record) for record in seen)
    assert len([r for r in seen if r["path"] == "/v1/messages" and r.get("script") == "probe"]) == 2
    # one security event per refusal, naming what was refused, all audited
    assert len(refused) == len(CASES)
    details = " ".join(e.detail for e in refused)
    for named in ("'mcp_servers'", "'context-1m-2025-08-07'", "'service_tier'", "'1h'", "count_tokens"):
        assert named in details, details
    assert all(e.severity == "warning" for e in refused)
    assert _audited_kinds(db, task_id).count("request_refused") == len(CASES)
