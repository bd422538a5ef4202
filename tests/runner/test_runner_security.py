"""What a task may not do: tools outside its policy, escapes, forged jobs, the real key."""

from __future__ import annotations

import secrets
from pathlib import Path

import msgspec
import pytest
from runner_kit import assert_gapless, follow, make_job, scripted_model, submit

import bus as bus_module
from bus import Artifact, Finished, Security, Settings, Started, ToolCall, ToolResult
from sandbox import Runner

pytestmark = pytest.mark.usefixtures("require_bwrap", "require_claude")

FORBIDDEN = """
[[turns]]
text = "Let me fetch something."
tool_use = [{ name = "WebFetch", input = { url = "http://example.com", prompt = "read" } }]

[[turns]]
after_tool_result = true
text = "Could not fetch."
"""

ESCAPE = """
[[turns]]
text = "Trying the network."
tool_use = [{ name = "Bash", input = { command = "curl -s http://1.1.1.1 || true", description = "net" } }]

[[turns]]
after_tool_result = true
text = "Trying host files."
tool_use = [{ name = "Read", input = { file_path = "/etc/shadow" } }]

[[turns]]
after_tool_result = true
text = "Contained."
"""


async def test_a_tool_outside_the_policy_is_never_offered_and_a_call_is_refused(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    async with scripted_model(runner_settings, tmp_path, scripts={"forbidden": FORBIDDEN}) as (settings, model):
        async with Runner(settings, backend="bwrap", slots=1, runner_id="r-forbid"):
            job = make_job(settings, bus_module.TaskRequest(description="[script:forbidden] fetch a page"), tools=["Bash", "Read"])
            await submit(bus, job)
            events = await follow(bus, job.task_id)
        seen = model.requests()
    assert_gapless(events)
    main = [r for r in seen if r.get("script") == "forbidden"]
    assert main, "the model saw the task"
    for record in main:
        assert "WebFetch" not in record["tools"], "the model must never see a tool the policy does not allow"
        assert set(record["tools"]) <= {"Bash", "Read"}
    # Claude Code refuses a tool it does not have before any hook runs; the stream that
    # says so is forgeable from inside, so it is a failed tool result, not a security event
    results = [e for e in events if isinstance(e, ToolResult)]
    assert results and results[0].is_error and "WebFetch" in results[0].output


async def test_network_and_host_file_attempts_are_blocked_and_reported(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    async with scripted_model(runner_settings, tmp_path, scripts={"escape": ESCAPE}) as (settings, _model):
        async with Runner(settings, backend="bwrap", slots=1, runner_id="r-escape"):
            job = make_job(settings, bus_module.TaskRequest(description="[script:escape] get out"), tools=["Bash", "Read"])
            await submit(bus, job)
            events = await follow(bus, job.task_id)
    kinds = [e.kind for e in events if isinstance(e, Security)]
    assert "blocked_command" in kinds
    assert "path_denied" in kinds, "reading /etc/shadow is refused by the hook"
    blocked = next(e for e in events if isinstance(e, Security) and e.kind == "blocked_command")
    assert blocked.severity == "critical" and "curl" in blocked.detail
    assert isinstance(events[-1], Finished) and events[-1].status == "succeeded"


async def test_the_real_key_never_enters_the_sandbox(runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus) -> None:
    real_key = "sk-ant-test-" + secrets.token_hex(16)
    hunt = f"""
[[turns]]
text = "Looking for secrets."
tool_use = [{{ name = "Bash", input = {{ command = "{{ env; cat /proc/*/environ 2>/dev/null | tr '\\\\0' '\\\\n'; echo ENV-DONE; grep -rIl --exclude-dir=proc --exclude-dir=sys '{real_key[8:]}' / 2>/dev/null; echo SCAN-DONE; }} > hunt.txt 2>&1; tail -n 1 hunt.txt", description = "hunt" }} }}]

[[turns]]
after_tool_result = true
text = "Finished looking."
"""
    async with scripted_model(runner_settings, tmp_path, api_key=real_key, scripts={"hunt": hunt}) as (settings, _model):
        async with Runner(settings, backend="bwrap", slots=1, runner_id="r-hunt"):
            job = make_job(settings, bus_module.TaskRequest(description="[script:hunt] look around"), tools=["Bash"], timeout_s=180)
            await submit(bus, job)
            events = await follow(bus, job.task_id, timeout=200)
    assert isinstance(events[-1], Finished) and events[-1].status == "succeeded", events[-1]
    result = next(e for e in events if isinstance(e, ToolResult))
    assert "SCAN-DONE" in result.output
    artifact = next(e for e in events if isinstance(e, Artifact) and e.path == "hunt.txt")
    store = await bus.js.object_store(bus.subjects.artifacts_bucket)
    report = (await store.get(artifact.object_key)).data.decode()
    env_part, scan_part = report.split("ENV-DONE", 1)
    assert "ANTHROPIC_API_KEY=taskbus-placeholder-" in env_part, "the agent process holds only the placeholder"
    assert real_key[8:] not in report, "no file and no environment in the sandbox holds the real key"
    assert scan_part.strip() == "SCAN-DONE"
    for event in events:
        assert real_key not in bus_module.encode(event).decode()


async def test_a_forged_policy_is_denied_and_nothing_starts(runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus) -> None:
    async with scripted_model(runner_settings, tmp_path) as (settings, model):
        async with Runner(settings, backend="bwrap", slots=1, runner_id="r-forged"):
            job = make_job(settings, bus_module.TaskRequest(description="[script:write-a-file] x"), tools=["Bash"])
            forged = msgspec.structs.replace(job, policy=msgspec.structs.replace(job.policy, tools=["*"], max_cost_usd=1000.0))
            await submit(bus, forged)
            unsigned = make_job(settings, bus_module.TaskRequest(description="[script:write-a-file] y"), secret="another-secret")
            await submit(bus, unsigned)
            events = await follow(bus, forged.task_id)
            other = await follow(bus, unsigned.task_id)
        assert model.requests() == []
    for evs in (events, other):
        assert_gapless(evs)
        assert evs[-1].status == "denied" and evs[-1].reason == "bad_signature"
        assert not any(isinstance(e, (Started, ToolCall)) for e in evs)
        sec = [e for e in evs if isinstance(e, Security)]
        assert sec and sec[0].kind == "forged_policy" and sec[0].severity == "critical"
