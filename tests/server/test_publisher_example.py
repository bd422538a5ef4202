"""docs/examples/publish_task.py (nats-py only) against the real gateway: it gets its events,
and a bad key gets a rejection."""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

from bus import Settings
from server._dispatch import Caller

EXAMPLE = Path(__file__).resolve().parents[2] / "docs" / "examples" / "publish_task.py"


async def _start(settings: Settings, key: str, *args: str) -> asyncio.subprocess.Process:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBUS_")}
    env["TASKBUS_API_KEY"] = key
    return await asyncio.create_subprocess_exec(
        sys.executable,
        str(EXAMPLE),
        "--url",
        settings.nats_url,
        "--prefix",
        settings.subject_prefix,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )


async def test_the_publisher_example_follows_its_task_to_the_finished_event(settings: Settings, make_stack) -> None:
    async with make_stack(settings) as stack:
        key = await stack.key("developer")
        proc = await _start(settings, key, "write hello.txt")
        async with asyncio.timeout(30):
            first = (await proc.stdout.readline()).decode()
            assert first.startswith("accepted t_"), first + (await proc.stderr.read()).decode()
            task_id = first.split()[1]
            # no runner in this test: cancelling the queued task ends it, and the example sees that
            record = await stack.store.get_task(task_id)
            await stack.dispatcher.cancel(Caller(record.key_id, record.profile), task_id)
            rest, _ = await proc.communicate()
        lines = rest.decode().splitlines()
        assert lines[0].split()[:2] == ["1", "accepted"]
        assert lines[1].split()[:3] == ["2", "finished", "cancelled"]
        assert lines[-1].startswith("result: cancelled")
        assert proc.returncode == 1


async def test_the_publisher_example_reports_a_rejected_key(settings: Settings, make_stack) -> None:
    async with make_stack(settings):
        proc = await _start(settings, "tb_" + "z" * 43, "anything")
        async with asyncio.timeout(30):
            _, err = await proc.communicate()
        assert proc.returncode == 2 and b"rejected: unauthorized" in err and b"zzzz" not in err
