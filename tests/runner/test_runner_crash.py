"""A runner killed with SIGKILL mid-task: the task ends runner_lost, never runs twice,
and the restarted runner's reaper removes the dead runner's sandbox."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest
from runner_kit import exited, first_tool_call, follow, make_job, runner_process, scripted_model, submit

import bus as bus_module
from bus import Finished, Settings, Started
from sandbox import get_backend

pytestmark = pytest.mark.usefixtures("require_claude")


CRASH_ENV = {"TASKBUS_JOB_ACK_WAIT_S": "3", "TASKBUS_HEARTBEAT_S": "1"}


async def _sandbox_ids(backend: str, settings: Settings) -> list[str]:
    sandboxes = get_backend(backend, settings)
    try:
        return [s.id for s in await sandboxes.list()]
    finally:
        await sandboxes.close()


@pytest.mark.parametrize("backend", ["bwrap", "docker"])
async def test_a_task_whose_runner_was_killed_ends_runner_lost_and_its_sandbox_is_reaped(
    backend: str, request: pytest.FixtureRequest, runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    request.getfixturevalue(f"require_{backend}")
    log = tmp_path / "runner.log"
    async with scripted_model(runner_settings, tmp_path) as (settings, model):
        first = runner_process(settings, "r-crash", backend, log, env=CRASH_ENV)
        try:
            job = make_job(settings, bus_module.TaskRequest(description="[script:runaway] keep going"), timeout_s=300, max_turns=1000)
            await submit(bus, job)
            started = await first_tool_call(bus, job.task_id, timeout=90)
            os.killpg(first.pid, signal.SIGKILL)
            await exited(first, 10)
            calls_at_kill = len(model.requests())
            second = runner_process(settings, "r-crash", backend, log, env=CRASH_ENV)
            try:
                events = await follow(bus, job.task_id, timeout=90)
                left = [i for i in await _sandbox_ids(backend, settings) if i == started.sandbox_id]
            finally:
                second.send_signal(signal.SIGTERM)
                second_code = await exited(second, 60)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
        calls_after = len(model.requests())
    finished = events[-1]
    assert isinstance(finished, Finished)
    assert finished.status == "failed" and finished.reason == "runner_lost", log.read_text()[-3000:]
    assert sum(isinstance(e, Started) for e in events) == 1, "the task never runs twice"
    assert calls_after - calls_at_kill <= 1, "no new model conversation started after the kill"
    assert left == [], f"sandbox {started.sandbox_id} of the killed runner is still there"
    assert second_code == 0, log.read_text()[-3000:]


@pytest.mark.usefixtures("require_bwrap")
async def test_sigterm_drains_then_cancels_with_runner_shutdown_and_heartbeats_show_the_task(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    log = tmp_path / "runner.log"
    beats: list[bus_module.Heartbeat] = []

    async def on_beat(msg) -> None:  # type: ignore[no-untyped-def]
        beats.append(bus_module.decode_heartbeat(msg.data))

    hb = await bus.nc.subscribe(bus.subjects.runner("r-term"), cb=on_beat)
    async with scripted_model(runner_settings, tmp_path) as (settings, _model):
        proc = runner_process(settings, "r-term", "bwrap", log, env=CRASH_ENV)
        try:
            job = make_job(settings, bus_module.TaskRequest(description="[script:runaway] forever"), timeout_s=300, max_turns=1000)
            await submit(bus, job)
            await first_tool_call(bus, job.task_id, timeout=90)
            async with asyncio.timeout(10):
                while not any(job.task_id in b.running for b in beats):
                    await asyncio.sleep(0.1)
            os.kill(proc.pid, signal.SIGTERM)
            events = await follow(bus, job.task_id, timeout=90)
            code = await exited(proc, 60)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
    await hb.unsubscribe()
    assert code == 0, log.read_text()[-2000:]
    assert events[-1].status == "cancelled" and events[-1].reason == "runner_shutdown"
    beat = next(b for b in beats if job.task_id in b.running)
    assert beat.backend == "bwrap" and beat.slots >= 1 and beat.kinds == ["task"]
