"""SIGKILL the `taskbus audit run` process mid-burst: nothing is lost or stored twice."""

from __future__ import annotations

import asyncio
import signal
import sqlite3
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from audit_helpers import count_rows, start_cli, stop_process, wait_until
from nats.js.errors import NotFoundError

from audit import open_db, verify
from audit._subscriber import EVENTS_CONSUMER
from bus import Bus, Message, Settings, new_task_id

TASKS = 10
PER_TASK = 1000


async def _burst(bus: Bus, task_ids: list[str], halfway: asyncio.Event, resume: asyncio.Event) -> None:
    """10 tasks x 1,000 events, each task's events in order (as 10 runners would publish);
    every task pauses after 500 until ``resume``, so the kill lands mid-burst by construction."""
    now = datetime.now(UTC)
    paused = 0

    async def one_task(task_id: str) -> None:
        nonlocal paused
        subject = bus.subjects.events(task_id)
        for seq in range(1, PER_TASK + 1):
            if seq == PER_TASK // 2 + 1:
                paused += 1
                if paused == len(task_ids):
                    halfway.set()
                await resume.wait()
            payload = msgspec.json.encode(Message(task_id=task_id, seq=seq, ts=now, text=f"step {seq}"))
            await bus.js.publish(subject, payload, timeout=10)

    async with asyncio.TaskGroup() as tg:
        for task_id in task_ids:
            tg.create_task(one_task(task_id))


async def _wait_consumer(bus: Bus, proc) -> None:
    """The writer is ready once its durable consumer exists."""
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        assert proc.poll() is None, proc.stderr.read().decode()
        try:
            await bus.js.consumer_info(bus.subjects.events_stream, EVENTS_CONSUMER)
            return
        except NotFoundError:
            assert asyncio.get_running_loop().time() < deadline, "audit writer did not start within 30s"
            await asyncio.sleep(0.05)


@pytest.mark.slow
async def test_sigkill_mid_burst_then_restart_stores_all_10000_events_exactly_once(bus: Bus, settings: Settings, db: Path):
    task_ids = [new_task_id() for _ in range(TASKS)]
    proc = start_cli(settings, "audit", "run")
    halfway, resume = asyncio.Event(), asyncio.Event()
    try:
        await _wait_consumer(bus, proc)
        burst = asyncio.create_task(_burst(bus, task_ids, halfway, resume))
        await asyncio.wait_for(halfway.wait(), 120)
        await wait_until(lambda: count_rows(db) > 0 or proc.poll() is not None, timeout=60, what="the first committed batch")
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        await stop_process(proc, signal.SIGKILL)  # 5,000 published, some stored, 5,000 to come
        killed_at = count_rows(db)
        resume.set()
        await asyncio.wait_for(burst, 120)
        assert 0 < killed_at < TASKS * PER_TASK
    finally:
        resume.set()
        await stop_process(proc, signal.SIGKILL)

    restarted = start_cli(settings, "audit", "run")
    try:
        await wait_until(
            lambda: count_rows(db) >= TASKS * PER_TASK or restarted.poll() is not None,
            timeout=120,
            what="all 10,000 rows after the restart",
        )
        assert restarted.poll() is None
    finally:
        assert await stop_process(restarted, signal.SIGTERM) == 0  # SIGTERM is a clean stop

    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT count(*), count(DISTINCT stream_seq) FROM audit").fetchone() == (10_000, 10_000)
        for task_id in task_ids:
            seqs = [r[0] for r in conn.execute("SELECT seq FROM audit WHERE task_id = ? ORDER BY id", (task_id,))]
            assert seqs == list(range(1, PER_TASK + 1))
    finally:
        conn.close()
    result = verify(open_db(db, readonly=True))
    assert result.ok and result.rows == 10_000
