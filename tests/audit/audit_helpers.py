"""Audit test helpers: one event of every type, an in-process writer, a subprocess writer,
and polling with deadlines (never sleeps)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from polling import count_rows as count_rows
from polling import wait_until as wait_until

from audit import AuditOptions, run_audit
from bus import (
    Accepted,
    Artifact,
    Bus,
    Finished,
    Log,
    Message,
    ModelCall,
    Security,
    Settings,
    Started,
    ToolCall,
    ToolResult,
    Usage,
)
from bus._tied import spawn_tied

ROOT = Path(__file__).resolve().parents[2]


def every_event(task_id: str, *, key_id: str = "tb_k1", ts: datetime | None = None) -> list[Any]:
    """One event of every bus event type for ``task_id``, seq 1..10, ``finished`` last."""
    t = ts or datetime.now(UTC)
    base = {"task_id": task_id}
    return [
        Accepted(**base, seq=1, ts=t, kind="task", key_id=key_id, profile="default", model="claude-haiku-4-5"),
        Started(**base, seq=2, ts=t, runner_id="r1", backend="bwrap", sandbox_id="sb1"),
        Message(**base, seq=3, ts=t, text=f"planning the work for {task_id}"),
        ToolCall(**base, seq=4, ts=t, id="tc1", name="Bash", input={"command": "ls -la /workspace"}),
        ToolResult(**base, seq=5, ts=t, id="tc1", output="total 0"),
        ModelCall(
            **base,
            seq=6,
            ts=t,
            model="claude-haiku-4-5",
            usage=Usage(input_tokens=10, output_tokens=5),
            cost_usd=0.001,
            total_cost_usd=0.001,
        ),
        Security(**base, seq=7, ts=t, kind="tool_denied", detail="WebFetch is not allowed", severity="warning"),
        Artifact(**base, seq=8, ts=t, path="out/report.txt", size=3, sha256="0" * 64, object_key="k"),
        Log(**base, seq=9, ts=t, line="stderr line"),
        Finished(**base, seq=10, ts=t, status="succeeded", result="all done", turns=2),
    ]


async def publish_all(bus: Bus, events: list[Any]) -> None:
    for ev in events:
        await bus.publish(bus.subjects.events(ev.task_id), ev)


async def wait_rows(db: Path, n: int, *, timeout: float = 30.0) -> None:
    await wait_until(lambda: count_rows(db) >= n, timeout=timeout, what=f"{n} rows in {db}")


class RunningWriter:
    def __init__(self, settings: Settings, db: Path, options: AuditOptions | None = None) -> None:
        self.settings, self.db, self.options = settings, db, options
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> RunningWriter:
        self.stop = asyncio.Event()
        ready = asyncio.Event()
        self.task = asyncio.create_task(run_audit(self.settings, db_path=self.db, stop=self.stop, ready=ready, options=self.options))
        done, _ = await asyncio.wait({self.task, asyncio.ensure_future(ready.wait())}, timeout=20, return_when=asyncio.FIRST_COMPLETED)
        if self.task in done:
            self.task.result()  # raises the start-up error
        assert ready.is_set(), "audit writer did not start within 20s"
        return self

    async def close(self) -> None:
        if self.task is not None:
            self.stop.set()
            await asyncio.wait_for(self.task, 20)
            self.task = None


def cli_env(settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBUS_")}
    env.update(
        TASKBUS_NATS_URL=settings.nats_url,
        TASKBUS_SUBJECT_PREFIX=settings.subject_prefix,
        TASKBUS_DATA_DIR=settings.data_dir,
        PYTHONUNBUFFERED="1",
        COLUMNS="200",
    )
    return env


def start_cli(settings: Settings, *args: str) -> subprocess.Popen[bytes]:
    """``taskbus <args>`` as a subprocess in its own session, pointed at the test NATS."""
    return spawn_tied(
        [sys.executable, "-m", "cli", *args],
        cwd=ROOT,
        env=cli_env(settings),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )


async def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 15.0) -> int:
    """Signal the process group and wait for the exit (off the event loop); SIGKILL after ``timeout``."""
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
        try:
            await asyncio.to_thread(proc.wait, timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            await asyncio.to_thread(proc.wait, 5)
    return proc.returncode


def past(**delta: float) -> datetime:
    return datetime.now(UTC) - timedelta(**delta)


def fill(db: Path, events: list[Any], *, stream: str = "events", start_seq: int = 1) -> None:
    """Store ``events`` through the real writer (no bus needed), as if fetched in one batch."""
    import msgspec

    from audit import Writer, open_db

    conn = open_db(db)
    try:
        w = Writer(conn)
        batch = []
        for i, ev in enumerate(events):
            subject = f"t.events.{ev.task_id}" if stream == "events" else f"t.audit.{ev.kind}"
            batch.append((stream, start_seq + i, subject, msgspec.json.encode(ev)))
        w.write_batch(batch)
    finally:
        conn.close()


def invoke(settings: Settings, *args: str) -> Any:
    """``taskbus <args>`` through typer's CliRunner with the test's settings in the environment."""
    from typer.testing import CliRunner

    from cli import app

    env = {k: v for k, v in cli_env(settings).items() if k.startswith("TASKBUS_")}
    return CliRunner().invoke(app, list(args), env=env)
