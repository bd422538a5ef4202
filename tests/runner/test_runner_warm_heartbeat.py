"""A runner's heartbeat says how many warm sandboxes it holds (the console's runners page
and ``taskbus status`` show it)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import msgspec
import pytest
from runner_kit import follow, make_job, scripted_model, submit

import bus as bus_module
from bus import Settings
from sandbox import Runner


@pytest.mark.usefixtures("require_docker", "require_claude")
async def test_a_docker_runner_heartbeats_its_warm_pool_level_and_bwrap_none(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    beats: dict[str, list[bus_module.Heartbeat]] = {"r-warm": []}

    async def on_beat(msg) -> None:  # type: ignore[no-untyped-def]
        beat = bus_module.decode_heartbeat(msg.data)
        beats.setdefault(beat.runner_id, []).append(beat)

    sub = await bus.nc.subscribe(bus.subjects.runner("r-warm"), cb=on_beat)
    pooled = msgspec.structs.replace(runner_settings, docker_warm_pool=1, heartbeat_s=0.5)
    try:
        async with scripted_model(pooled, tmp_path) as (settings, _model):
            async with Runner(settings, backend="docker", slots=1, runner_id="r-warm"):
                async with asyncio.timeout(60):
                    while not beats["r-warm"]:
                        await asyncio.sleep(0.1)
                assert beats["r-warm"][-1].warm == 0  # nothing warmed before the first task of a class
                job = make_job(settings, bus_module.TaskRequest(description="[script:hello] hi"))
                await submit(bus, job)
                events = await follow(bus, job.task_id, timeout=180)
                assert events[-1].status == "succeeded", events[-1]
                async with asyncio.timeout(120):  # the pool refills the class in the background
                    while not any(b.warm >= 1 for b in beats["r-warm"]):
                        await asyncio.sleep(0.2)
    finally:
        await sub.unsubscribe()
    assert max(b.warm for b in beats["r-warm"]) == 1  # never more than the pool size
