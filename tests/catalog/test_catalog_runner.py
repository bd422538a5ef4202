"""Catalog agents and skills installed for one task and used by the real Claude Code CLI
(bwrap and Docker), driven by the scripted model; added with the CLI, chosen by policy."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

import bus as bus_module
from bus import Catalog, Finished, Log, Security, Settings, TaskRequest, ToolCall, ToolResult, sign_job
from catalog_kit import write_agent, write_skill
from profiles import profile_from_mapping, resolve_policy
from sandbox import Runner

sys.path.insert(0, str(Path(__file__).parents[1] / "runner"))
from runner_kit import follow, scripted_model, submit  # noqa: E402

pytestmark = pytest.mark.usefixtures("require_bwrap", "require_claude")

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
    profile = profile_from_mapping("catalog-test", {
        "tools": ["Agent", "Skill", "Read", "Write", "Bash"], "agents": list(agents), "skills": list(skills),
        "models": ["claude-sonnet-4-6"], "timeout_s": 180, "max_turns": 10, "max_cost_per_task_usd": 5.0,
    })
    task_id = bus_module.new_task_id()
    policy = resolve_policy(profile, request, task_id=task_id, key_id="tb_test", model="claude-sonnet-4-6",
                            settings=settings, catalog=entries)
    return bus_module.Job(task_id=task_id, policy=policy, request=request,
                          signature=sign_job(task_id, policy, request, settings.job_secret))


async def add_with_cli(cli, tmp_path: Path) -> None:
    await asyncio.to_thread(cli, "agents", "add", str(write_agent(tmp_path / "src", marker="[script:scribe-work] Write files.")))
    await asyncio.to_thread(cli, "skills", "add", str(write_skill(tmp_path / "src", marker="[script:skill-body-seen]")))


@pytest.mark.parametrize("backend", ["bwrap"])
async def test_a_registered_agent_is_spawned_with_its_prompt_and_its_tool_calls_are_attributed(
    runner_settings: Settings, tmp_path: Path, bus, cli, backend: str
) -> None:
    await add_with_cli(cli, tmp_path)
    entries = await (await Catalog.open(bus.js, bus.subjects.catalog_bucket)).entries()
    async with scripted_model(runner_settings, tmp_path, scripts=SCRIPTS) as (settings, model):
        async with Runner(settings, backend=backend, slots=1, runner_id="r-agents"):
            job = job_for(settings, entries, TaskRequest(description="[script:spawn-scribe] extract the workflow",
                                                         allow_agents=["scribe"], allow_skills=[]))
            assert [(r.name, r.sha256) for r in job.policy.catalog] == [("scribe", entries[0].sha256)]
            await submit(bus, job)
            events = await follow(bus, job.task_id, timeout=180)
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.status == "succeeded", (finished, [e for e in events if isinstance(e, (Log, Security))])
    scripts = [r.get("script") for r in model.requests() if r.get("path") == "/v1/messages"]
    assert "scribe-work" in scripts  # the marker exists only in the registered agent's system prompt
    print(events)
