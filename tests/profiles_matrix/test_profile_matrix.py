"""End to end from a FRESH data dir: every shipped profile (and one made `--from admin`)
x {`complete`, `run_task`} x {MCP over HTTP, NATS submit}, with the admin key the first
`taskbus up` prints and keys made by the CLI for the rest. Each cell asserts what the
profile promises: succeeded, or a clear denial naming what was refused; nothing may end
`failed` for a reason the profile did not cause.

The stack is one `taskbus up` for the module (``stack``), started the way a user does;
the only thing prepared in its data dir is ``images``, linked to this machine's built
sandbox image (a fresh data dir has no root filesystem of its own yet)."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bus import Settings, free_port
from profiles import default_profiles

ROOT = Path(__file__).resolve().parents[2]
TASKBUS = str(Path(sys.executable).parent / "taskbus")
CLAUDE = ROOT / ".tools" / "claude" / "node_modules" / ".bin" / "claude"

pytestmark = pytest.mark.usefixtures("require_bwrap", "require_claude")

FROM_ADMIN = "ops"
PROFILES = [*default_profiles(), FROM_ADMIN]
TASK_REPLY = "Hello from the scripted model."  # the shipped `hello` script


@dataclass
class Stack:
    env: dict[str, str]
    mcp_url: str
    keys: dict[str, str]
    log: Path

    def cli(self, *args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
        return subprocess.run([TASKBUS, *args], env=self.env, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def _wait(what: str, predicate: Any, timeout: float, log: Path) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{log.read_text(errors='replace')[-3000:]}")


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """`taskbus up` on a fresh data dir; the admin key it printed; CLI-made keys for the rest."""
    images = Settings.load({}).data_path / "images"
    if not images.is_dir():
        pytest.fail("the sandbox image is missing (run `taskbus sandbox build-image`; scripts/setup does)")
    tmp = tmp_path_factory.mktemp("matrix")
    data = tmp / "data"  # does not exist yet: `taskbus up` creates it
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBUS_") and k != "ANTHROPIC_API_KEY"}
    env.update({"TASKBUS_DATA_DIR": str(data), "TASKBUS_HTTP_PORT": str(free_port()), "TASKBUS_CLAUDE_PATH": str(CLAUDE.resolve())})
    data.mkdir()
    (data / "images").symlink_to(images)  # until the image cache is per machine (issue 14 item 2)
    log = tmp / "up.log"
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            [TASKBUS, "up", "--nats-port", "0"],
            env=env,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=fh,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:

        def ready() -> dict[str, Any] | None:
            assert proc.poll() is None, f"taskbus up exited early:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(OSError, ValueError):
                state = json.loads((data / "up.json").read_text())
                return state if state.get("ready") else None
            return None

        state = _wait("taskbus up to be ready", ready, 180, log)
        admin = re.findall(r"\btb_[A-Za-z0-9_-]{20,}", log.read_text())
        assert len(admin) == 1, log.read_text()[-3000:]
        env["TASKBUS_NATS_URL"] = state["nats_url"]  # `taskbus submit` finding it alone is issue 14 item 3
        made = Stack(env=env, mcp_url=state["mcp_url"], keys={"admin": admin[0]}, log=log)
        created = made.cli("profiles", "create", FROM_ADMIN, "--from", "admin")
        assert created.returncode == 0, created.stderr
        for profile in PROFILES:
            if profile != "admin":
                key = made.cli("keys", "create", "--profile", profile, "--json")
                assert key.returncode == 0, key.stderr
                made.keys[profile] = json.loads(key.stdout)["key"]
        yield made
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


def promises(profile: str, kind: str) -> bool:
    """Whether the profile lets its key run this kind (the cells that must succeed)."""
    granted = default_profiles()["admin" if profile == FROM_ADMIN else profile].kinds
    return ("task" if kind == "run_task" else "complete") in granted


async def call_mcp(stack: Stack, key: str, tool: str, arguments: dict[str, Any]) -> tuple[bool, dict[str, Any], str]:
    import httpx2
    from mcp import Client
    from mcp.client.streamable_http import streamable_http_client

    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=300) as http:
        async with Client(streamable_http_client(stack.mcp_url, http_client=http)) as client:
            result = await client.call_tool(tool, arguments)
    text = "\n".join(getattr(c, "text", "") for c in result.content)
    return bool(result.is_error), dict(result.structured_content or {}), text


@pytest.mark.parametrize("kind", ["complete", "run_task"])
@pytest.mark.parametrize("profile", PROFILES)
async def test_mcp_over_http(stack: Stack, profile: str, kind: str) -> None:
    prompt = f"matrix {profile} {kind} over mcp"
    if kind == "complete":
        is_error, doc, text = await call_mcp(stack, stack.keys[profile], "complete", {"prompt": prompt})
    else:
        is_error, doc, text = await call_mcp(stack, stack.keys[profile], "run_task", {"description": f"[script:hello] {prompt}"})
    if promises(profile, kind):
        assert not is_error and doc.get("status") == "succeeded", (doc, text, stack.log.read_text()[-2000:])
        assert (prompt if kind == "complete" else TASK_REPLY) in text
    else:
        assert is_error and doc["error"]["code"] == "permission_denied", (doc, text)
        assert f"profile {profile!r} does not allow {kind}" in doc["error"]["message"]


@pytest.mark.parametrize("kind", ["complete", "run_task"])
@pytest.mark.parametrize("profile", PROFILES)
def test_nats_submit(stack: Stack, profile: str, kind: str) -> None:
    prompt = f"matrix {profile} {kind} over nats"
    args = ["--complete", prompt] if kind == "complete" else [f"[script:hello] {prompt}"]
    done = stack.cli("submit", "--key", stack.keys[profile], "--json", *args)
    if promises(profile, kind):
        assert done.returncode == 0, (done.stdout, done.stderr)
        summary = json.loads(done.stdout)
        assert summary["status"] == "succeeded" and summary["reason"] in (None, ""), summary
        assert (prompt if kind == "complete" else TASK_REPLY) in summary["result"]
    else:
        assert done.returncode == 1
        assert "rejected (permission_denied)" in done.stderr and f"does not allow {kind}" in done.stderr, done.stderr
