"""run_task jobs on a real runner: bwrap sandbox, real Claude Code CLI, scripted model."""

from __future__ import annotations

from pathlib import Path

import pytest
from runner_kit import assert_gapless, follow, make_job, scripted_model, submit

import bus as bus_module
from bus import Artifact, Finished, ModelCall, Settings, Started, ToolCall, ToolResult
from sandbox import Runner

pytestmark = pytest.mark.usefixtures("require_bwrap", "require_claude")


async def test_write_a_file_task_succeeds_with_the_file_as_an_artifact(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    async with scripted_model(runner_settings, tmp_path) as (settings, _model):
        async with Runner(settings, backend="bwrap", slots=1, runner_id="r-write"):
            job = make_job(settings, bus_module.TaskRequest(description="[script:write-a-file] please write hello.txt"))
            await submit(bus, job)
            events = await follow(bus, job.task_id)
    assert_gapless(events)
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.status == "succeeded", finished
    assert any(isinstance(e, Started) and e.backend == "bwrap" for e in events)
    assert any(isinstance(e, ToolCall) and e.name == "Bash" for e in events)
    assert any(isinstance(e, ToolResult) for e in events)
    calls = [e for e in events if isinstance(e, ModelCall)]
    assert calls and abs(sum(c.cost_usd for c in calls) - finished.cost_usd) < 1e-9
    artifacts = [e for e in events if isinstance(e, Artifact)]
    assert [a.path for a in artifacts] == ["hello.txt"]
    store = await bus.js.object_store(bus.subjects.artifacts_bucket)
    stored = await store.get(artifacts[0].object_key)
    assert stored.data and len(stored.data) == artifacts[0].size
    assert finished.diff and "+++ b/hello.txt" in finished.diff
