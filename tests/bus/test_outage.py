"""A connection knows when it was down: a heartbeat not heard during its own outage was not
missed by the peer that sent it (a NATS restart must not make live runners look dead)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

from bus import Bus, EmbeddedNats, Settings
from sandbox import Runner

DEADLINE_S = 30


async def _until(check: Callable[[], bool]) -> None:
    async with asyncio.timeout(DEADLINE_S):
        while not check():
            await asyncio.sleep(0.02)


async def test_time_spent_disconnected_is_measured_and_does_not_age_peers(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "js")
    server.start()
    try:
        bus = await Bus.open(server.url, name="outage")
        async with bus:
            before = time.monotonic()
            assert bus.offline_between(before - 60, before) == 0.0
            server.stop()
            await _until(lambda: not bus.nc.is_connected)
            await asyncio.sleep(1.5)  # the outage being measured
            server.start()
            await _until(lambda: bus.nc.is_connected)
            after = time.monotonic()
            offline = bus.offline_between(before, after)
            assert 1.5 <= offline <= after - before, offline
            assert bus.offline_between(after, after + 5) == 0.0  # nothing after the reconnect

            # a runner judging a peer last heard just before the outage: still alive
            runner = Runner(Settings(nats_url=server.url, heartbeat_s=0.3, data_dir=str(tmp_path / "data")), runner_id="judge")
            runner.bus = bus
            runner._peers["peer"] = before
            runner._peer_tasks["peer"] = {"t_running"}
            assert offline > 3 * 0.3 and time.monotonic() - before > 3 * 0.3  # unheard for longer than the window ...
            assert runner.peer_runs("peer", "t_running")  # ... but only because we were offline
            assert runner.peer_runs(None, "t_running")  # a `complete` names no runner: any live peer's heartbeat counts
            assert not runner.peer_runs(None, "t_nobody_runs")
            runner._peers["gone"] = before - 5  # silent before the outage too: dead
            assert "gone" not in runner.live_runners()
            # its task list is from before the outage (a task started just before is not in it):
            # no verdict on a redelivered job until every live peer has been heard again
            assert not runner.peers_heard()
            runner._peers["peer"] = time.monotonic()  # its next heartbeat
            assert runner.peers_heard()
    finally:
        server.stop()
