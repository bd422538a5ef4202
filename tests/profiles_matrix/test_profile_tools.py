"""Each shipped profile on a real runner: the tools the real Claude Code offers inside
the sandbox (its stream-json ``init`` event, surfaced as the runner's log line
"claude ... started: model ..., tools ...") are exactly what the profile grants; the
developer's sub-agent runs; a rule grant runs only matching commands; ``readwrite``
writes the project and ``readonly`` cannot."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
from runner_kit import follow, scripted_model, submit

import bus as bus_module
from bus import Finished, Log, Security, Settings, TaskRequest, ToolCall, ToolResult, canonical_tool, sign_job, tool_names
from profiles import Profile, default_profiles, profile_from_mapping, profile_to_mapping, resolve_policy
from sandbox import Runner

pytestmark = pytest.mark.usefixtures("require_bwrap", "require_claude")

PROBE = """
[[turns]]
at = 0
text = "nothing to do"
"""
SUB_AGENT = """
[[turns]]
at = 0
text = "asking a sub-agent"
tool_use = [{ name = "Agent", input = { description = "greet", prompt = "say hi", subagent_type = "general-purpose" } }]
[[turns]]
at = "any"
after_tool_result = true
text = "the sub-agent answered"
"""
LS_ONLY = """
[[turns]]
at = 0
text = "listing, then reading"
tool_use = [{ name = "Bash", input = { command = "ls /workspace", description = "list" } },
            { name = "Bash", input = { command = "cat /etc/passwd", description = "read" } }]
[[turns]]
at = "any"
after_tool_result = true
text = "done"
"""
WRITE_PROJECT = """
[[turns]]
at = 0
text = "writing the project"
tool_use = [{ name = "Write", input = { file_path = "/project/written.txt", content = "from the agent" } },
            { name = "Bash", input = { command = "echo bash > /project/bash.txt", description = "write" } }]
[[turns]]
at = "any"
after_tool_result = true
text = "done"
"""
SCRIPTS = {"probe": PROBE, "sub-agent": SUB_AGENT, "ls-only": LS_ONLY, "write-project": WRITE_PROJECT}


def from_admin(name: str = "ops") -> Profile:
    """What `taskbus profiles create ops --from admin` makes."""
    return profile_from_mapping(name, profile_to_mapping(default_profiles()["admin"]))


def task_profiles() -> list[Profile]:
    shipped = [p for p in default_profiles().values() if "task" in p.kinds]
    return [*shipped, from_admin()]


def make_job(settings: Settings, profile: Profile, request: TaskRequest) -> bus_module.Job:
    task_id = bus_module.new_task_id()
    model = "claude-sonnet-4-6" if "claude-sonnet-4-6" in profile.models or "*" in profile.models else profile.models[0]
    policy = resolve_policy(profile, request, task_id=task_id, key_id="tb_test", model=model, settings=settings, realpath=os.path.realpath)
    policy = msgspec.structs.replace(policy, timeout_s=180, memory_mb=max(policy.memory_mb, 2048))
    signature = sign_job(task_id, policy, request, settings.job_secret)
    return bus_module.Job(task_id=task_id, policy=policy, request=request, signature=signature)


def offered_tools(events: list) -> set[str]:
    """The init event's tools (it still calls the sub-agent tool ``Task``), canonical."""
    lines = [e.line for e in events if isinstance(e, Log) and e.stream == "runner" and " started: model " in e.line]
    assert len(lines) == 1, [e for e in events if isinstance(e, Log)]
    listed = lines[0].rsplit(", tools ", 1)[1]
    return {canonical_tool(t) for t in listed.split(",") if t}


async def run(settings: Settings, b: bus_module.Bus, profile: Profile, request: TaskRequest, *, backend: str = "bwrap") -> list:
    async with Runner(settings, backend=backend, slots=1, runner_id=f"r-{profile.name}"):
        job = make_job(settings, profile, request)
        await submit(b, job)
        return await follow(b, job.task_id, timeout=240)


def refused(events: list) -> list[str]:
    return [
        e.kind for e in events if isinstance(e, Security) and e.kind in ("tool_denied", "tool_dropped", "permission_denied", "model_denied")
    ]


@pytest.mark.parametrize("profile", task_profiles(), ids=lambda p: p.name)
async def test_claude_code_offers_exactly_the_tools_the_profile_grants(
    profile: Profile, runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    async with scripted_model(runner_settings, tmp_path, scripts=SCRIPTS) as (settings, _model):
        events = await run(settings, bus, profile, TaskRequest(description="[script:probe] which tools?"))
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.status == "succeeded", finished
    policy_tools = tool_names(make_job(settings, profile, TaskRequest(description="x")).policy.tools)
    assert offered_tools(events) == set(policy_tools)
    assert refused(events) == []
    if profile.name == "developer":
        assert "Agent" in policy_tools and "Bash" in policy_tools


async def test_the_developer_profile_runs_a_built_in_sub_agent(runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus) -> None:
    developer = default_profiles()["developer"]
    async with scripted_model(runner_settings, tmp_path, scripts=SCRIPTS) as (settings, model):
        events = await run(settings, bus, developer, TaskRequest(description="[script:sub-agent] delegate"))
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.status == "succeeded", finished
    calls = [e for e in events if isinstance(e, ToolCall) and e.name == "Agent"]
    assert len(calls) == 1
    result = next(e for e in events if isinstance(e, ToolResult) and e.id == calls[0].id)
    assert not result.is_error, result
    assert refused(events) == []
    # the sub-agent made its own model request (its prompt has no script marker, so the
    # scripted model echoed it) and its answer came back as the Agent tool's result
    assert "say hi" in result.output and "agentId:" in result.output, result
    assert [r.get("script") for r in model.requests() if r.get("path") == "/v1/messages"] == ["sub-agent", "default", "sub-agent"]


async def test_a_rule_grant_runs_matching_commands_and_refuses_the_rest(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    ls_only = profile_from_mapping("ls-only", {"tools": ["Bash(ls:*)"], "models": ["claude-sonnet-4-6"]})
    async with scripted_model(runner_settings, tmp_path, scripts=SCRIPTS) as (settings, _model):
        events = await run(settings, bus, ls_only, TaskRequest(description="[script:ls-only] look around"))
    assert offered_tools(events) == {"Bash"}
    calls = {e.input["command"]: e.id for e in events if isinstance(e, ToolCall)}
    results = {e.id: e for e in events if isinstance(e, ToolResult)}
    assert not results[calls["ls /workspace"]].is_error, results[calls["ls /workspace"]]
    cat = results[calls["cat /etc/passwd"]]
    assert cat.is_error and "root:x:0:0" not in cat.output, cat
    assert "not covered by the task's grants (Bash(ls:*))" in cat.output, cat
    assert "tool_denied" in refused(events)
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.status == "succeeded", finished


@pytest.mark.parametrize(("fs_access", "backend"), [("readwrite", "bwrap"), ("readonly", "bwrap"), ("readwrite", "docker")])
async def test_readwrite_writes_the_project_in_place_and_readonly_cannot(
    fs_access: str, backend: str, runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus, request: pytest.FixtureRequest
) -> None:
    if backend == "docker":
        request.getfixturevalue("require_docker")
    project = tmp_path / "projects" / "app"
    project.mkdir(parents=True)
    project.chmod(0o777)  # the agent writes as uid 1000
    writer = profile_from_mapping(
        "writer",
        {
            "tools": ["Write", "Bash"],
            "models": ["claude-sonnet-4-6"],
            "fs_access": fs_access,
            "project_roots": [str(tmp_path / "projects")],
        },
    )
    async with scripted_model(runner_settings, tmp_path, scripts=SCRIPTS) as (settings, _model):
        events = await run(
            settings, bus, writer, TaskRequest(description="[script:write-project] write", project=str(project)), backend=backend
        )
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.status == "succeeded", finished
    written = sorted(p.name for p in project.iterdir())
    if fs_access == "readwrite":
        assert written == ["bash.txt", "written.txt"]
        assert (project / "written.txt").read_text() == "from the agent"
    else:
        assert written == []
        results = [e for e in events if isinstance(e, ToolResult)]
        assert len(results) == 2 and all(r.is_error for r in results), results
        assert "path_denied" in [e.kind for e in events if isinstance(e, Security)]


async def test_docker_offers_the_developer_its_tools_and_sub_agent(
    require_docker: None, runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    developer = default_profiles()["developer"]
    async with scripted_model(runner_settings, tmp_path, scripts=SCRIPTS) as (settings, _model):
        events = await run(settings, bus, developer, TaskRequest(description="[script:sub-agent] delegate"), backend="docker")
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.status == "succeeded", finished
    assert offered_tools(events) == set(tool_names(developer.tools))
    assert [e.name for e in events if isinstance(e, ToolCall)] == ["Agent"]
    assert refused(events) == []


async def test_a_task_failing_on_a_refused_model_never_says_reason_success(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    from runner_kit import make_job as make_raw_job

    async with scripted_model(runner_settings, tmp_path, scripts=SCRIPTS) as (settings, _model):
        async with Runner(settings, backend="bwrap", slots=1, runner_id="r-refused"):
            # a policy whose model is not among its models: the gateway refuses every call
            job = make_raw_job(
                settings,
                TaskRequest(description="[script:probe] hi"),
                model="claude-opus-4-8",
                models=["claude-haiku-4-5"],
                timeout_s=180,
                memory_mb=2048,
            )
            await submit(bus, job)
            events = await follow(bus, job.task_id, timeout=240)
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.status == "failed", finished
    assert finished.reason not in (None, "", "success"), finished
    assert "model_denied" in refused(events)


@pytest.mark.parametrize("provider", ["anthropic", "claude-cli"])
async def test_an_admin_completion_succeeds_with_either_provider(
    provider: str, runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    """The admin's models are `*`: the policy lists every priced model, so the provider
    and the gateway accept the routed one (they compared it with a literal `*` before)."""
    from bus import CompleteRequest, Message

    admin = from_admin("ops")
    request = CompleteRequest(prompt="admin says hello")
    async with scripted_model(msgspec.structs.replace(runner_settings, complete_provider=provider), tmp_path) as (settings, _model):
        async with Runner(settings, backend="bwrap", slots=1, runner_id=f"r-{provider}"):
            task_id = bus_module.new_task_id()
            policy = resolve_policy(admin, request, task_id=task_id, key_id="tb_test", model="claude-haiku-4-5", settings=settings)
            assert "*" not in policy.models
            job = bus_module.Job(
                task_id=task_id, policy=policy, request=request, signature=sign_job(task_id, policy, request, settings.job_secret)
            )
            await submit(bus, job)
            events = await follow(bus, task_id, timeout=240)
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.status == "succeeded", finished
    assert "admin says hello" in (finished.result or "".join(e.text for e in events if isinstance(e, Message)))
