"""The audit writer waits for a cluster that cannot answer yet instead of exiting.

CI found the writer dead at the end of a cluster chaos run with nothing stored: on a loaded
machine a fresh 3-node cluster left its consumer create unanswered, and the writer exited on
that first timeout (nothing restarts it in that harness; under ``taskbus up`` the restart
would have hidden it). Here the cluster has no quorum at all when the writer starts.
"""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

from polling import count_rows, wait_until
from procs import LoggedProcess

from bus import Accepted, Bus, Finished, Message, new_task_id

from .conftest import Cluster


def _audit_env(cluster: Cluster) -> dict[str, str]:
    s = cluster.settings("audit")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBUS_")}
    env.update(
        TASKBUS_NATS_URL=s.nats_url,
        TASKBUS_SUBJECT_PREFIX=s.subject_prefix,
        TASKBUS_DATA_DIR=s.data_dir,
        TASKBUS_NATS_CREDENTIALS=s.nats_credentials,
        TASKBUS_NATS_REPLICAS="3",
        TASKBUS_LOG_LEVEL="info",
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    return env


async def test_an_audit_writer_started_while_the_cluster_has_no_quorum_waits_then_stores_everything(
    cluster: Cluster, tmp_path: Path
) -> None:
    async with await Bus.for_settings(cluster.settings("server"), name="pytest-server") as bus:
        await bus.ensure_streams()
    db, log = tmp_path / "audit.db", tmp_path / "audit.log"
    await asyncio.to_thread(cluster.kill, 1)
    await asyncio.to_thread(cluster.kill, 2)
    proc = LoggedProcess(
        name="audit", argv=[sys.executable, "-m", "cli", "audit", "run", "--db", str(db)], log=log, env=_audit_env(cluster)
    )
    proc.start()
    try:
        try:
            # JetStream cannot answer without a quorum: the writer says so and keeps waiting
            # (its stream check alone retries for ~40 s before that line)
            await wait_until(
                lambda: "audit cannot set up" in log.read_text() or not proc.alive,
                timeout=150,
                what="the audit writer's 'cannot set up ... yet' line",
            )
            assert proc.alive, f"the audit writer exited while the cluster had no quorum:\n{proc.tail()}"
            assert count_rows(db) == 0
        finally:
            await asyncio.to_thread(cluster.restart, 1)
            await asyncio.to_thread(cluster.restart, 2)
        task_id, now = new_task_id(), datetime.now(UTC)
        events = [
            Accepted(task_id=task_id, seq=1, ts=now, kind="task", key_id="tb_k1", profile="default", model="claude-haiku-4-5"),
            Message(task_id=task_id, seq=2, ts=now, text="working"),
            Finished(task_id=task_id, seq=3, ts=now, status="succeeded", result="done", turns=1),
        ]
        async with await Bus.for_settings(cluster.settings("server"), name="pytest-server") as bus:
            for event in events:
                await bus.publish(bus.subjects.events(task_id), event)
        await wait_until(lambda: count_rows(db) >= len(events), timeout=120, what=f"{len(events)} rows in {db}")
        assert proc.alive
    finally:
        code = await asyncio.to_thread(proc.stop, 30)
    assert code == 0, proc.tail()
    assert "Traceback" not in log.read_text()
