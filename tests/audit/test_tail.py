"""`taskbus audit tail`: the last rows from the database, or (--follow) events live from the bus."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from datetime import UTC, datetime
from pathlib import Path

from audit_helpers import ROOT, cli_env, every_event, fill, invoke

from bus import Bus, Log, Message, Settings, new_task_id


def test_tail_prints_the_last_rows_oldest_first(settings: Settings, db: Path):
    task_id = new_task_id()
    fill(db, every_event(task_id))
    result = invoke(settings, "audit", "tail", "-n", "3", "--json")
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["type"] for r in rows] == ["artifact", "log", "finished"]
    human = invoke(settings, "audit", "tail", "--type", "tool_call")
    assert human.exit_code == 0 and task_id in human.stdout and 'Bash {"command":"ls -la /workspace"}' in human.stdout


class Tail:
    """`taskbus audit tail --follow ...` as a subprocess, read line by line with deadlines."""

    def __init__(self, settings: Settings, *args: str) -> None:
        self.settings, self.args = settings, args
        self.proc: asyncio.subprocess.Process | None = None

    async def __aenter__(self) -> Tail:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli",
            "audit",
            "tail",
            "--follow",
            *self.args,
            cwd=ROOT,
            env=cli_env(self.settings),
            start_new_session=True,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        async with asyncio.timeout(30):  # it says so on stderr once it is subscribed
            while b"following" not in (line := await self.proc.stderr.readline()):
                assert line, "tail exited before subscribing"
        return self

    async def line(self, timeout: float = 20.0) -> str:
        async with asyncio.timeout(timeout):
            return (await self.proc.stdout.readline()).decode()

    async def __aexit__(self, *exc: object) -> None:
        if self.proc.returncode is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(10):
                    await self.proc.wait()
            except TimeoutError:
                os.killpg(self.proc.pid, signal.SIGKILL)
                await self.proc.wait()


async def test_tail_follow_shows_the_events_of_a_running_task_as_they_happen(bus: Bus, settings: Settings):
    task_id = new_task_id()
    async with Tail(settings, "--json") as tail:
        for ev in every_event(task_id):
            await bus.publish(bus.subjects.events(task_id), ev)
            row = json.loads(await tail.line())  # each event shows before the next is published
            assert (row["task_id"], row["seq"], row["type"]) == (task_id, ev.seq, ev.__struct_config__.tag)
        assert row["event"]["status"] == "succeeded"
        await bus.publish(bus.subjects.events(task_id), b"not an event")
        assert json.loads(await tail.line())["type"] == "malformed"
    assert tail.proc.returncode == 0  # SIGTERM stops it cleanly


async def test_tail_follow_filters_by_task_key_and_type_and_prints_readable_lines(bus: Bus, settings: Settings):
    mine, other = new_task_id(), new_task_id()
    now = datetime.now(UTC)
    async with Tail(settings, "--key", "tb_carol", "--type", "message") as tail:
        # the key of a task comes from its accepted event (or the audit database's task map)
        await bus.publish(bus.subjects.events(mine), every_event(mine, key_id="tb_carol")[0])
        await bus.publish(bus.subjects.events(other), Message(task_id=other, seq=1, ts=now, text="not mine"))
        await bus.publish(bus.subjects.events(mine), Log(task_id=mine, seq=2, ts=now, line="not a message"))
        await bus.publish(bus.subjects.events(mine), Message(task_id=mine, seq=3, ts=now, text="hello from carol"))
        line = await tail.line()
        assert mine in line and "message" in line and "hello from carol" in line and "key=tb_carol" in line
    async with Tail(settings, "--task", mine, "--json") as tail:  # a task is replayed from its start
        assert [json.loads(await tail.line())["seq"] for _ in range(3)] == [1, 2, 3]


def test_tail_follow_of_a_task_on_a_prefix_without_streams_fails_with_one_clear_line(settings: Settings):
    import subprocess

    result = subprocess.run(
        [sys.executable, "-m", "cli", "audit", "tail", "--follow", "--task", new_task_id()],
        cwd=ROOT,
        env=cli_env(settings),
        capture_output=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "cannot follow" in result.stderr.decode() and "Traceback" not in result.stderr.decode()
