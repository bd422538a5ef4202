"""Warm agents (issue 18): a task takes a sandbox whose Claude Code was started before it
came, and still sees only its own files, tools, model and cost cap; an idle warm agent
asks the model nothing."""

from __future__ import annotations

from pathlib import Path

from runner_kit import follow, make_job, scripted_model, submit
from warm_kit import init_line, model_requests, started, wait_warm, warm_settings

import bus as bus_module
from bus import Finished, InputFile, Settings, ToolResult
from sandbox import Runner

LIST_FILES = """
[[turns]]
text = "listing"
tool_use = [{ name = "Bash", input = { command = "ls -A /workspace; cat /workspace/*.txt", description = "list" } }]

[[turns]]
after_tool_result = true
text = "listed"
"""


def _file(name: str, text: str) -> InputFile:
    return InputFile(path=name, content=text)


async def test_two_tasks_of_different_policies_each_run_on_a_warm_agent_with_only_their_own_rules(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus, backend: str
) -> None:
    log = tmp_path / "model-requests.jsonl"
    policy_a = {"tools": ["Bash", "Read"], "model": "claude-sonnet-4-6", "max_cost_usd": 5.0}
    policy_b = {"tools": ["Read"], "model": "claude-haiku-4-5", "max_cost_usd": 0.000001}
    async with scripted_model(warm_settings(runner_settings), tmp_path, scripts={"list": LIST_FILES}) as (settings, _m):
        async with Runner(settings, backend=backend, slots=2, runner_id=f"r-warm-{backend}") as runner:
            # one cold task per class: the runner learns which classes to keep warm
            for policy in (policy_a, policy_b):
                job = make_job(settings, bus_module.TaskRequest(description="[script:hello] hi"), **policy)
                await submit(bus, job)
                cold = await follow(bus, job.task_id, timeout=180)
                assert started(cold).warm is False
            after_cold = len(model_requests(log))
            await wait_warm(runner, 2)
            before = len(model_requests(log))
            beats = runner.warm.taken if runner.warm else 0

            job_a = make_job(
                settings, bus_module.TaskRequest(description="[script:list] go", files=[_file("a.txt", "file of task A")]), **policy_a
            )
            await submit(bus, job_a)
            events_a = await follow(bus, job_a.task_id, timeout=180)
            job_b = make_job(
                settings, bus_module.TaskRequest(description="[script:list] go", files=[_file("b.txt", "file of task B")]), **policy_b
            )
            await submit(bus, job_b)
            events_b = await follow(bus, job_b.task_id, timeout=180)

    assert before == after_cold  # the idle warm agents asked the model nothing
    assert runner.warm is not None and runner.warm.taken == beats + 2
    assert started(events_a).warm is True and started(events_b).warm is True
    assert started(events_a).sandbox_id != started(events_b).sandbox_id
    # task A: its model, its tools (Claude Code's init event and what the gateway let through), its file only
    assert "model claude-sonnet-4-6" in init_line(events_a) and "tools Bash,Read" in init_line(events_a)
    listing = next(e for e in events_a if isinstance(e, ToolResult)).output
    assert "a.txt" in listing and "file of task A" in listing
    assert "b.txt" not in listing and "file of task B" not in listing
    assert events_a[-1].status == "succeeded", events_a[-1]
    # task B: the haiku model set on its warm agent, Read only, and its own tiny cost cap
    assert "model claude-haiku-4-5" in init_line(events_b) and "tools Read" in init_line(events_b)
    assert "Bash" not in init_line(events_b)
    finished_b = events_b[-1]
    assert isinstance(finished_b, Finished) and finished_b.status == "budget_exceeded", finished_b
    requests = model_requests(log)[before:]
    # only task A reached the model (B's cap refused its first call at the gateway), with A's tools
    assert requests and {r["model"] for r in requests} == {"claude-sonnet-4-6"}
    assert all(sorted(r["tools"]) == ["Bash", "Read"] for r in requests)


async def test_a_restarted_runner_warms_the_classes_it_was_asked_for_before(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus, require_bwrap: None, require_claude: Path
) -> None:
    async with scripted_model(warm_settings(runner_settings), tmp_path) as (settings, _m):
        async with Runner(settings, backend="bwrap", slots=1, runner_id="r-warm-restart"):
            job = make_job(settings, bus_module.TaskRequest(description="[script:hello] hi"), tools=["Read"])
            await submit(bus, job)
            assert started(await follow(bus, job.task_id, timeout=180)).warm is False
            first_id = job.task_id
        saved = (settings.data_path / "runs" / "r-warm-restart.warm-classes.json").read_text()
        async with Runner(settings, backend="bwrap", slots=1, runner_id="r-warm-restart") as runner:
            await wait_warm(runner, 1)  # no task yet in this life: the class comes from the last one
            job = make_job(settings, bus_module.TaskRequest(description="[script:hello] hi"), tools=["Read"])
            await submit(bus, job)
            events = await follow(bus, job.task_id, timeout=180)
    assert started(events).warm is True and events[-1].status == "succeeded"
    assert first_id not in saved and "tb_test" not in saved  # class fields only, nothing of a task
