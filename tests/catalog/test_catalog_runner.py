"""Catalog agents and skills installed for one task and used by the real Claude Code CLI
(bwrap and Docker), driven by the scripted model; added with the CLI, chosen by policy."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest
from catalog_kit import write_agent, write_skill

import bus as bus_module
from bus import Catalog, Finished, Log, Security, Settings, TaskRequest, ToolCall, ToolResult, sign_job
from profiles import profile_from_mapping, resolve_policy
from sandbox import Runner

sys.path.insert(0, str(Path(__file__).parents[1] / "runner"))
from runner_kit import follow, scripted_model, submit

pytestmark = pytest.mark.usefixtures("require_bwrap", "require_claude")


@pytest.fixture(params=["bwrap", "docker"])
def backend(request) -> str:
    if request.param == "docker":
        request.getfixturevalue("require_docker")
    return request.param


SCRIPTS = {
    "spawn-scribe": """
[[turns]]
text = "Handing the notes to the scribe."
tool_use = [{ name = "Agent", input = { subagent_type = "scribe", description = "Extract the workflow", prompt = "Extract the workflow from notes.md into workflow.md" } }]

[[turns]]
after_tool_result = true
text = "The scribe wrote workflow.md"
""",
    "scribe-work": """
[[turns]]
text = "Writing the workflow."
tool_use = [{ name = "Write", input = { file_path = "{cwd}/workflow.md", content = "1. collect notes\\n2. assign owners\\n" } }]

[[turns]]
after_tool_result = true
text = "workflow.md written"
""",
    "use-skill": """
[[turns]]
at = 0
text = "Loading the notes kit."
tool_use = [{ name = "Skill", input = { skill = "notes-kit" } }]

[[turns]]
at = 1
text = "Reading the template."
tool_use = [{ name = "Read", input = { file_path = "/home/agent/.claude/skills/notes-kit/templates/template.md" } }]

[[turns]]
at = 2
text = "Skill used."
""",
}


def job_for(settings: Settings, entries, request: TaskRequest, *, agents=("*",), skills=("*",)) -> bus_module.Job:
    profile = profile_from_mapping(
        "catalog-test",
        {
            "tools": ["Agent", "Skill", "Read", "Write", "Bash"],
            "agents": list(agents),
            "skills": list(skills),
            "models": ["claude-sonnet-4-6"],
            "timeout_s": 180,
            "max_turns": 10,
            "max_cost_per_task_usd": 5.0,
        },
    )
    task_id = bus_module.new_task_id()
    policy = resolve_policy(
        profile, request, task_id=task_id, key_id="tb_test", model="claude-sonnet-4-6", settings=settings, catalog=entries
    )
    return bus_module.Job(
        task_id=task_id, policy=policy, request=request, signature=sign_job(task_id, policy, request, settings.job_secret)
    )


async def add_with_cli(cli, tmp_path: Path, bus) -> Catalog:
    """``taskbus agents add`` and ``taskbus skills add`` (the CLI runs its own event loop: a thread)."""
    await asyncio.to_thread(cli, "agents", "add", str(write_agent(tmp_path / "src", marker="[script:scribe-work] Write files.")))
    await asyncio.to_thread(cli, "skills", "add", str(write_skill(tmp_path / "src", marker="[script:skill-body-seen]")))
    return await Catalog.open(bus.js, bus.subjects.catalog_bucket)


async def run_job(settings: Settings, bus, job, *, backend: str = "bwrap", runner_id: str = "r-catalog") -> list:
    async with Runner(settings, backend=backend, slots=1, runner_id=runner_id):
        await submit(bus, job)
        return await follow(bus, job.task_id, timeout=180)


def succeeded(events: list) -> Finished:
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.status == "succeeded", (
        finished,
        [e for e in events if isinstance(e, (Log, Security))],
    )
    return finished


async def audit_rows(settings: Settings, cli, task_id: str, *args: str) -> list[dict]:
    """Run the audit writer until it holds the task's ``finished`` row, then search with the CLI."""
    from audit import open_db, run_audit
    from audit import search as audit_search

    stop, ready = asyncio.Event(), asyncio.Event()
    db = Path(settings.data_dir) / "audit-test.db"
    writer = asyncio.create_task(run_audit(settings, db_path=db, stop=stop, ready=ready))
    try:
        async with asyncio.timeout(60):
            await ready.wait()
            while True:
                conn = open_db(db, readonly=True)
                try:
                    if audit_search(conn, task=task_id, types=["finished"]):
                        break
                finally:
                    conn.close()
                await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(writer, 30)
    return await asyncio.to_thread(cli.json, "audit", "search", "--db", str(db), "--task", task_id, *args)


async def test_a_registered_agent_is_spawned_with_its_prompt_and_its_tool_calls_are_attributed(
    runner_settings: Settings, tmp_path: Path, bus, cli, backend: str
) -> None:
    catalog = await add_with_cli(cli, tmp_path, bus)
    async with scripted_model(runner_settings, tmp_path, scripts=SCRIPTS) as (settings, model):
        job = job_for(
            settings,
            await catalog.entries(),
            TaskRequest(description="[script:spawn-scribe] extract the workflow", allow_agents=["scribe"], allow_skills=[]),
        )
        scribe = await catalog.get("agent", "scribe")
        assert [(r.name, r.sha256) for r in job.policy.catalog] == [("scribe", scribe.sha256)]
        # removed after admission: the task still installs the version its policy pins
        await asyncio.to_thread(cli, "agents", "rm", "scribe")
        events = await run_job(settings, bus, job, backend=backend)
        scripts = [r.get("script") for r in model.requests() if r.get("path") == "/v1/messages"]
    succeeded(events)
    assert "scribe-work" in scripts  # its marker exists only in the registered agent's system prompt
    calls = [e for e in events if isinstance(e, ToolCall)]
    spawn = next(c for c in calls if c.name == "Agent")
    assert (spawn.invokes, spawn.invokes_sha256, spawn.agent) == ("agent:scribe", scribe.sha256, "")
    write = next(c for c in calls if c.name == "Write")
    assert (write.parent_id, write.agent) == (spawn.id, "scribe")
    written = next(e for e in events if isinstance(e, ToolResult) and e.id == write.id)
    assert written.parent_id == spawn.id
    assert next(e for e in events if isinstance(e, ToolResult) and e.id == spawn.id).parent_id == ""
    assert any(isinstance(e, Log) and f"agent scribe ({scribe.sha256[:12]})" in e.line for e in events)

    rows = await audit_rows(settings, cli, job.task_id, "--agent", "scribe")
    assert sorted(r["event"]["name"] for r in rows if r["type"] == "tool_call") == ["Agent", "Write"]
    assert await audit_rows(settings, cli, job.task_id, "--agent", "someone-else") == []


async def test_a_registered_skill_is_loaded_and_its_resource_file_read(
    runner_settings: Settings, tmp_path: Path, bus, cli, backend: str
) -> None:
    catalog = await add_with_cli(cli, tmp_path, bus)
    async with scripted_model(runner_settings, tmp_path, scripts={**SCRIPTS, "skill-body-seen": SCRIPTS["use-skill"]}) as (settings, model):
        job = job_for(
            settings,
            await catalog.entries(),
            TaskRequest(description="[script:use-skill] use the notes kit", allow_agents=[], allow_skills=["notes-kit"]),
        )
        events = await run_job(settings, bus, job, backend=backend)
        requests = [r for r in model.requests() if r.get("path") == "/v1/messages"]
    succeeded(events)
    kit = await catalog.get("skill", "notes-kit")
    call = next(e for e in events if isinstance(e, ToolCall) and e.name == "Skill")
    assert (call.invokes, call.invokes_sha256) == ("skill:notes-kit", kit.sha256)
    # SKILL.md's marker reached the model: Claude Code loaded the registered text
    assert any(r.get("marker") == "skill-body-seen" for r in requests), [(r.get("marker"), r.get("user_text")) for r in requests]
    read = next(e for e in events if isinstance(e, ToolCall) and e.name == "Read")
    result = next(e for e in events if isinstance(e, ToolResult) and e.id == read.id)
    assert not result.is_error and "# Workflow" in result.output
    rows = await audit_rows(settings, cli, job.task_id, "--skill", "notes-kit")
    assert [r["event"]["name"] for r in rows if r["type"] == "tool_call"] == ["Skill"]


async def test_an_agent_or_skill_the_task_does_not_allow_is_not_installed_and_its_call_is_denied(
    runner_settings: Settings, tmp_path: Path, bus, cli
) -> None:
    catalog = await add_with_cli(cli, tmp_path, bus)
    script = """
[[turns]]
at = 0
tool_use = [{ name = "Bash", input = { command = "ls -R /home/agent/.claude; echo LISTED", description = "look" } }]

[[turns]]
at = 1
tool_use = [{ name = "Agent", input = { subagent_type = "scribe", description = "x", prompt = "x" } }]

[[turns]]
at = 2
tool_use = [{ name = "Skill", input = { skill = "notes-kit" } }]

[[turns]]
at = 3
text = "gave up"
"""
    async with scripted_model(runner_settings, tmp_path, scripts={"sneaky": script}) as (settings, model):
        job = job_for(settings, await catalog.entries(), TaskRequest(description="[script:sneaky] try"), agents=["Explore"], skills=[])
        assert job.policy.agents == ["Explore"] and job.policy.catalog == []
        events = await run_job(settings, bus, job)
        requests = [r for r in model.requests() if r.get("path") == "/v1/messages"]
    assert isinstance(events[-1], Finished)
    listing = next(e for e in events if isinstance(e, ToolResult) and "LISTED" in e.output)
    assert "scribe" not in listing.output and "notes-kit" not in listing.output
    for name in ("Agent", "Skill"):  # the call itself failed: nothing ran
        call = next(e for e in events if isinstance(e, ToolCall) and e.name == name)
        assert next(e for e in events if isinstance(e, ToolResult) and e.id == call.id).is_error
    denied = {e.kind for e in events if isinstance(e, Security)}
    assert "agent_denied" in denied, denied
    # Claude Code 2.1.197 refuses a skill it does not know before the PreToolUse hook runs:
    # then there is no hook decision (so no security event), only its own error
    skill = next(e for e in events if isinstance(e, ToolCall) and e.name == "Skill")
    skill_result = next(e for e in events if isinstance(e, ToolResult) and e.id == skill.id).output
    assert "skill_denied" in denied or "Unknown skill: notes-kit" in skill_result, (denied, skill_result)
    assert all(r.get("script") != "scribe-work" for r in requests)
    assert all(r.get("marker") != "skill-body-seen" for r in requests)
    rows = await audit_rows(settings, cli, job.task_id, "--type", "security")
    assert {r["event"]["kind"] for r in rows} == denied


async def test_runners_on_two_data_dirs_install_the_same_catalog_version(runner_settings: Settings, tmp_path: Path, bus, cli) -> None:
    import msgspec

    catalog = await add_with_cli(cli, tmp_path, bus)
    scribe = await catalog.get("agent", "scribe")
    other = tmp_path / "host-b"
    other.mkdir()
    (other / "images").symlink_to(Path(runner_settings.data_dir) / "images")
    installed = []
    async with scripted_model(runner_settings, tmp_path, scripts=SCRIPTS) as (settings, model):
        for runner_id, data_dir in (("host-a", settings.data_dir), ("host-b", str(other))):
            host = msgspec.structs.replace(settings, data_dir=data_dir)
            job = job_for(host, await catalog.entries(), TaskRequest(description="[script:spawn-scribe] go", allow_agents=["scribe"]))
            events = await run_job(host, bus, job, runner_id=runner_id)
            succeeded(events)
            started = next(e for e in events if type(e).__name__ == "Started")
            assert started.runner_id == runner_id
            installed.append([e.line for e in events if isinstance(e, Log) and e.line.startswith("installed from the catalog")])
            installed.append([c.invokes_sha256 for c in events if isinstance(c, ToolCall) and c.name == "Agent"])
        scripts = [r.get("script") for r in model.requests() if r.get("path") == "/v1/messages"]
    assert installed[0] == installed[2] and installed[1] == installed[3] == [scribe.sha256]
    assert scripts.count("scribe-work") >= 2


EXAMPLES = Path(__file__).parents[2] / "docs" / "examples"
# (folder, task description, input files, agents, skills, artifacts, invokes, text in the result, a file and what it holds)
ALPHA_CASES = {
    "meeting-workflow": (
        "Extract the workflow from meeting-notes.md into workflow.md and owners.md",
        ["meeting-notes.md"],
        ["workflow-scribe"],
        ["workflow-extraction"],
        ["owners.md", "workflow.md"],
        ["skill:workflow-extraction", "agent:workflow-scribe"],
        "workflow.md lists the 4 steps",
        ("workflow.md", "1. Freeze the feature branch (owner: Ana, due: December 5)"),
    ),
    "code-analysis": (
        "Review app.py for security problems and write findings.md",
        ["app.py"],
        ["code-auditor"],
        [],
        ["findings.md"],
        ["agent:code-auditor"],
        "1 high (SQL injection, app.py:5)",
        ("findings.md", "SQL injection"),
    ),
    "docs-generation": (
        "Write the API reference of calc.py to docs/calc.md",
        ["calc.py"],
        [],
        ["api-docs"],
        ["docs/calc.md"],
        ["skill:api-docs"],
        "sections for add and ratio",
        ("docs/calc.md", "## ratio(a: float, b: float) -> float"),
    ),
    "test-generation": (
        "Write unit tests for slug.py and run them",
        ["slug.py"],
        [],
        ["unit-tests"],
        ["test_slug.py"],
        ["skill:unit-tests"],
        "python3 -m unittest: OK",
        ("test_slug.py", "class SlugifyTest(unittest.TestCase)"),
    ),
}


@pytest.mark.parametrize("case", sorted(ALPHA_CASES))
async def test_each_documented_alpha_case_runs_offline_with_its_agents_and_skills(
    runner_settings: Settings, tmp_path: Path, bus, cli, case: str
) -> None:
    """docs/examples/<case>: the plan's alpha cases, added with the CLI, run with the shipped model script."""
    description, inputs, agents, skills, artifacts, invokes, result, (path, holds) = ALPHA_CASES[case]
    example = EXAMPLES / case
    if agents:
        await asyncio.to_thread(cli, "agents", "add", str(example / "agents"))
    for skill in skills:
        await asyncio.to_thread(cli, "skills", "add", str(example / "skills" / skill))
    catalog = await Catalog.open(bus.js, bus.subjects.catalog_bucket)
    request = TaskRequest(
        description=f"[script:{case}] {description}",
        files=[bus_module.InputFile(path=name, content=(example / name).read_text()) for name in inputs],
        allow_agents=agents,
        allow_skills=skills,
    )
    async with scripted_model(runner_settings, tmp_path) as (settings, _model):
        job = job_for(settings, await catalog.entries(), request)
        events = await run_job(settings, bus, job)
    finished = succeeded(events)
    assert result in finished.result
    assert sorted(e.path for e in events if type(e).__name__ == "Artifact") == artifacts
    calls = [e for e in events if isinstance(e, ToolCall)]
    assert [c.invokes for c in calls if c.invokes] == invokes
    assert all(c.invokes_sha256 for c in calls if c.invokes)  # every one a catalog entry, by hash
    for agent in agents:  # the sub-agent's own calls are attributed to it
        assert any(c.agent == agent for c in calls)
    assert not [e for e in events if isinstance(e, ToolResult) and e.is_error]
    store = await bus.js.object_store(bus.subjects.artifacts_bucket)
    assert holds in (await store.get(f"{job.task_id}/{path}")).data.decode()
    if case == "test-generation":
        run = next(e for e in events if isinstance(e, ToolResult) and "Ran 3 tests" in e.output)
        assert run.output.rstrip().endswith("OK")


async def test_an_agent_file_planted_during_the_task_cannot_be_spawned(runner_settings: Settings, tmp_path: Path, bus, cli) -> None:
    """With the user settings source on, the agent tries to write its own sub-agent into
    ~/.claude/agents (a read-only bind: refused) and to spawn it: the policy's exact list
    decides, and no planted prompt reaches the model."""
    catalog = await add_with_cli(cli, tmp_path, bus)
    plant = (
        "printf -- '---\\\\nname: evil\\\\ndescription: planted\\\\n---\\\\n[script:evil-work] do bad things\\\\n' "
        "> /home/agent/.claude/agents/evil.md; ls /home/agent/.claude/agents && echo PLANTED"
    )
    script = f"""
[[turns]]
at = 0
tool_use = [{{ name = "Bash", input = {{ command = "{plant}", description = "plant" }} }}]

[[turns]]
at = 1
tool_use = [{{ name = "Agent", input = {{ subagent_type = "evil", description = "x", prompt = "go" }} }}]

[[turns]]
at = 2
text = "done"
"""
    async with scripted_model(runner_settings, tmp_path, scripts={"plant": script, "evil-work": SCRIPTS["scribe-work"]}) as (
        settings,
        model,
    ):
        job = job_for(settings, await catalog.entries(), TaskRequest(description="[script:plant] go", allow_agents=["scribe"]))
        assert job.policy.agents == ["scribe"]
        events = await run_job(settings, bus, job)
        scripts = [r.get("script") for r in model.requests() if r.get("path") == "/v1/messages"]
    planted = next(e for e in events if isinstance(e, ToolResult) and "PLANTED" in e.output)
    assert "evil.md" not in planted.output.replace("agents/evil.md", "") and "scribe.md" in planted.output
    assert "Read-only file system" in planted.output
    spawn = next(e for e in events if isinstance(e, ToolCall) and e.name == "Agent")
    assert spawn.invokes == "agent:evil" and spawn.invokes_sha256 == ""
    assert next(e for e in events if isinstance(e, ToolResult) and e.id == spawn.id).is_error
    assert "agent_denied" in {e.kind for e in events if isinstance(e, Security)}
    assert "evil-work" not in scripts  # the planted prompt never reached the model


async def test_installed_agents_and_skills_resist_the_agent_and_the_registered_versions_run(
    runner_settings: Settings, tmp_path: Path, bus, cli, backend: str
) -> None:
    """Through Bash the agent tries to overwrite, delete, chmod and rename away the
    installed agent and skill files, their folders and ~/.claude itself, then to plant
    a sub-agent of the allowed name: every attempt fails, and the sub-agent and skill
    that then run are the registered ones (the model sees their text, not the planted)."""
    import json

    from test_catalog_mounts import ATTACK, REFUSED, TARGETS

    catalog = await add_with_cli(cli, tmp_path, bus)
    attack = ATTACK.replace('"$@"', " ".join(TARGETS))
    attack += (
        "mkdir -p ~/.claude/agents; (printf -- '---\\nname: scribe\\ndescription: planted\\n---\\n"
        "[script:evil-work] planted\\n' > ~/.claude/agents/scribe.md) 2>/dev/null && echo PLANTED-SCRIBE || echo refused-plant-scribe\n"
    )
    # project-level copies of the same names in the workspace (writable): not loaded (setting source `user` only)
    attack += (
        "mkdir -p .claude/agents .claude/skills/notes-kit && printf -- '---\\nname: scribe\\ndescription: planted\\n---\\n"
        "[script:evil-work] planted\\n' > .claude/agents/scribe.md && printf -- '---\\nname: notes-kit\\n"
        "description: planted\\n---\\n[script:evil-skill] planted\\n' > .claude/skills/notes-kit/SKILL.md && echo project-copies\n"
    )
    script = f"""
[[turns]]
at = 0
tool_use = [{{ name = "Bash", input = {{ command = {json.dumps(attack)}, description = "tamper" }} }}]

[[turns]]
at = 1
tool_use = [{{ name = "Agent", input = {{ subagent_type = "scribe", description = "Extract", prompt = "Extract the workflow" }} }}]

[[turns]]
at = 2
tool_use = [{{ name = "Skill", input = {{ skill = "notes-kit" }} }}]

[[turns]]
at = 3
text = "all done"
"""
    skill_seen = '[[turns]]\nat = "any"\ntext = "skill used"\n'
    scripts = {"tamper": script, "evil-work": SCRIPTS["scribe-work"], "skill-body-seen": skill_seen, "evil-skill": skill_seen}
    async with scripted_model(runner_settings, tmp_path, scripts={**SCRIPTS, **scripts}) as (settings, model):
        job = job_for(
            settings,
            await catalog.entries(),
            TaskRequest(description="[script:tamper] go", allow_agents=["scribe"], allow_skills=["notes-kit"]),
        )
        events = await run_job(settings, bus, job, backend=backend)
        requests = [r for r in model.requests() if r.get("path") == "/v1/messages"]
    succeeded(events)
    bash = next(e for e in events if isinstance(e, ToolCall) and e.name == "Bash")
    output = next(e for e in events if isinstance(e, ToolResult) and e.id == bash.id).output
    assert output.split() == [*REFUSED, "refused-plant-scribe", "project-copies"], output
    scripts_seen = [r.get("script") for r in requests]
    assert "scribe-work" in scripts_seen and "evil-work" not in scripts_seen  # the registered prompt ran
    markers = [r.get("marker") for r in requests]
    assert "skill-body-seen" in markers and "evil-skill" not in markers  # the registered SKILL.md was loaded
    kinds = {e.kind for e in events if isinstance(e, Security)}
    assert not kinds & {"agent_denied", "skill_denied"}, kinds


async def test_a_warm_pool_container_runs_the_tasks_registered_agent(
    runner_settings: Settings, tmp_path: Path, bus, cli, require_docker: None
) -> None:
    """The pooled containers were created with empty catalog folders; the task that takes
    one gets its pinned agent there (filled on the host), and the CLI loads it."""
    import time

    import msgspec

    from bus import Started

    catalog = await add_with_cli(cli, tmp_path, bus)
    pooled = msgspec.structs.replace(runner_settings, docker_warm_pool=1)
    async with scripted_model(pooled, tmp_path, scripts=SCRIPTS) as (settings, model):
        async with Runner(settings, backend="docker", slots=1, runner_id="r-catalog-pool") as runner:
            runs = []
            for _ in range(2):  # the first runs cold and makes the pool fill; the second takes a pooled one
                job = job_for(
                    settings, await catalog.entries(), TaskRequest(description="[script:spawn-scribe] go", allow_agents=["scribe"])
                )
                await submit(bus, job)
                runs.append(await follow(bus, job.task_id, timeout=180))
                pool = runner.backend._pool  # type: ignore[attr-defined]
                deadline = time.monotonic() + 120
                while not any(pool._idle.values()) and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                if not runs[1:]:
                    idle = [slot.sid for slots in pool._idle.values() for slot in slots]
        scripts = [r.get("script") for r in model.requests() if r.get("path") == "/v1/messages"]
    assert idle, "the pool filled"
    assert next(e for e in runs[1] if isinstance(e, Started)).sandbox_id in idle  # the second ran in a pooled container
    for events in runs:
        succeeded(events)
    assert scripts.count("scribe-work") >= 2  # both times the registered prompt reached the model
