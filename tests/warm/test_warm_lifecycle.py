"""Warm agents end like sandboxes: a cancelled task on one is destroyed within 2 s, and a
runner killed with SIGKILL while holding idle ones leaves nothing once it restarts."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from pathlib import Path

from mount_guard import mount_points_under
from runner_kit import exited, first_tool_call, follow, make_job, runner_process, scripted_model, submit
from warm_kit import wait_warm, warm_settings

import bus as bus_module
from bus import Finished, Settings
from sandbox import Runner, get_backend

SLEEPER = """
[[turns]]
text = "waiting"
tool_use = [{ name = "Bash", input = { command = "sleep 300", description = "wait", timeout = 600000 } }]

[[turns]]
after_tool_result = true
text = "done"
"""


async def test_cancelling_a_task_on_a_warm_agent_destroys_its_sandbox_within_two_seconds(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus, backend: str
) -> None:
    async with scripted_model(warm_settings(runner_settings), tmp_path, scripts={"sleeper": SLEEPER}) as (settings, _m):
        sandboxes = get_backend(backend, settings)
        async with Runner(settings, backend=backend, slots=1, runner_id=f"r-warm-cancel-{backend}") as runner:
            first = make_job(settings, bus_module.TaskRequest(description="[script:hello] hi"))
            await submit(bus, first)
            await follow(bus, first.task_id, timeout=180)
            await wait_warm(runner, 1)
            job = make_job(settings, bus_module.TaskRequest(description="[script:sleeper] wait"))
            await submit(bus, job)
            began = await first_tool_call(bus, job.task_id, timeout=120)
            assert began.warm is True
            assert began.sandbox_id in {s.id for s in await sandboxes.list()}
            cancelled_at = time.monotonic()
            await bus.nc.publish(bus.subjects.control(job.task_id), bus_module.encode(bus_module.Cancel(task_id=job.task_id)))
            async with asyncio.timeout(2.0):  # the functional bound
                while began.sandbox_id in {s.id for s in await sandboxes.list()}:
                    await asyncio.sleep(0.05)
            gone_after = time.monotonic() - cancelled_at
            events = await follow(bus, job.task_id, timeout=60)
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.status == "cancelled", finished
    assert gone_after < 2.0


def _runner_process(settings: Settings, runner_id: str, backend: str, log: Path, *, warm: bool) -> subprocess.Popen[bytes]:
    env = {"TASKBUS_HEARTBEAT_S": "0.5", "TASKBUS_WARM_AGENTS_PER_CLASS": "1" if warm else "0", "TASKBUS_WARM_AGENTS_TOTAL": "2"}
    return runner_process(settings, runner_id, backend, log, env=env, args=("--slots", "2"))


def _warm_claudes() -> set[int]:
    """Host pids of Claude Code processes started as warm agents (idle on a stream-json stdin)."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if b"--input-format=stream-json" in argv and any(a.endswith(b"-p") for a in argv):
                pids.add(int(entry.name))
    return pids


async def test_a_runner_killed_with_idle_warm_agents_leaves_no_sandbox_process_or_mount_after_its_restart(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus, backend: str
) -> None:
    log = tmp_path / "runner.log"
    runner_id = f"r-warm-kill-{backend}"
    beats: list[bus_module.Heartbeat] = []

    async def on_beat(msg) -> None:  # type: ignore[no-untyped-def]
        beats.append(bus_module.decode_heartbeat(msg.data))

    sub = await bus.nc.subscribe(bus.subjects.runner(runner_id), cb=on_beat)
    warm_root = runner_settings.data_path / "runs" / runner_id / "warm"
    async with scripted_model(runner_settings, tmp_path) as (settings, _m):
        sandboxes = get_backend(backend, settings)
        first = _runner_process(settings, runner_id, backend, log, warm=True)
        try:
            job = make_job(settings, bus_module.TaskRequest(description="[script:hello] hi"))
            await submit(bus, job)
            await follow(bus, job.task_id, timeout=180)
            async with asyncio.timeout(120):
                while not beats or not beats[-1].warm_agents:
                    await asyncio.sleep(0.1)
            warm_ids = {s.id for s in await sandboxes.list() if s.runner_id == runner_id and s.task_id.startswith("warm-")}
            assert warm_ids and _warm_claudes() and mount_points_under(warm_root), "the warm agent is up before the kill"
            os.killpg(first.pid, signal.SIGKILL)
            await exited(first, 10)
            beats.clear()
            second = _runner_process(settings, runner_id, backend, log, warm=False)
            try:
                async with asyncio.timeout(60):  # startup reaps the dead life's sandboxes and mounts
                    while not (beats and beats[-1].ready):
                        await asyncio.sleep(0.1)
                    while warm_ids & {s.id for s in await sandboxes.list()} or _warm_claudes() or mount_points_under(warm_root):
                        await asyncio.sleep(0.2)
            finally:
                second.send_signal(signal.SIGTERM)
                await exited(second, 60)
        finally:
            if first.poll() is None:
                os.killpg(first.pid, signal.SIGKILL)
            await sub.unsubscribe()
    assert not warm_root.exists() or not any(warm_root.iterdir())
    assert second.returncode == 0, log.read_text()[-3000:]
