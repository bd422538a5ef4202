"""`taskbus audit run --ready-file`: the pid appears once the writer consumes (so what is
published after it is stored), and is gone when the writer stops."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from audit_helpers import every_event, publish_all, start_cli, stop_process, wait_rows, wait_until

from bus import Bus, Settings, new_task_id
from cli._up._readyfile import ready_file_path, ready_pid


async def test_the_audit_writer_writes_its_pid_once_consuming_and_removes_it_on_stop(settings: Settings, bus: Bus, db: Path) -> None:
    path = ready_file_path(settings.data_path, "audit")
    proc = start_cli(settings, "audit", "run", "--db", str(db), "--ready-file", str(path))
    try:
        await wait_until(lambda: ready_pid(path) == proc.pid or proc.poll() is not None, timeout=60, what="the audit writer's ready file")
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        await publish_all(bus, every_event(new_task_id()))
        await wait_rows(db, 10)
    finally:
        code = await stop_process(proc)
    assert code == 0
    assert not path.exists()


async def test_a_writer_that_cannot_start_says_why_in_one_line_and_writes_no_ready_file(tmp_path: Path) -> None:
    data = tmp_path / "data"
    path = ready_file_path(data, "audit")
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBUS_")}
    env.update(TASKBUS_DATA_DIR=str(data), TASKBUS_NATS_URL="nats://127.0.0.1:1")  # nothing listens there
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "cli",
        "audit",
        "run",
        "--ready-file",
        str(path),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(120):
        _, stderr = await proc.communicate()
    assert proc.returncode == 1
    text = stderr.decode()
    assert "cannot connect to NATS" in text and "Traceback" not in text
    assert not path.exists()
