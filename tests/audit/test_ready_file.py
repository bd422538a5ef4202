"""`taskbus audit run --ready-file`: the pid appears once the writer consumes (so what is
published after it is stored), and is gone when the writer stops."""

from __future__ import annotations

from pathlib import Path

from audit_helpers import every_event, publish_all, start_cli, stop_process, wait_rows, wait_until

from bus import Bus, Settings, new_task_id
from server._up._readyfile import ready_file_path, ready_pid


async def test_the_audit_writer_writes_its_pid_once_consuming_and_removes_it_on_stop(
    settings: Settings, bus: Bus, db: Path
) -> None:
    path = ready_file_path(settings.data_path, "audit")
    proc = start_cli(settings, "audit", "run", "--db", str(db), "--ready-file", str(path))
    try:
        await wait_until(lambda: ready_pid(path) == proc.pid or proc.poll() is not None, timeout=60,
                         what="the audit writer's ready file")
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        await publish_all(bus, every_event(new_task_id()))
        await wait_rows(db, 10)
    finally:
        code = await stop_process(proc)
    assert code == 0
    assert not path.exists()
