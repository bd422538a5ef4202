"""The status panel of `taskbus up`: runner slots from heartbeats, recent tasks from events."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from rich.console import Console

from bus import Accepted, Bus, Finished, Heartbeat, Started, Subjects, encode, new_task_id
from cli._up import OFFLINE_LABEL, StatusBoard


def _info(nats_url: str, subjects: Subjects, **extra: object) -> dict:
    return {
        "mcp_url": "http://127.0.0.1:8765/mcp",
        "nats_url": nats_url,
        "nats_embedded": True,
        "offline_model": True,
        "upstream": "",
        "data_dir": "/tmp/x",
        "admin_prefix": "tb_AbCd1234",
        "subject_prefix": subjects.prefix,
        **extra,
    }


def _text(board: StatusBoard) -> str:
    console = Console(record=True, width=160)
    console.print(board.render())
    return console.export_text()


async def test_the_panel_shows_runner_slots_and_recent_tasks_from_the_bus(bus: Bus, nats_url: str, subjects: Subjects) -> None:
    rows = [{"name": "runner", "label": "bwrap sandboxes", "pid": 42, "state": "ready", "restarts": 1}]
    board = StatusBoard(_info(nats_url, subjects), lambda: rows)
    stop = asyncio.Event()
    follower = asyncio.create_task(board.follow(stop))
    task_id = new_task_id()
    now = datetime.now(UTC)
    try:
        async with asyncio.timeout(10):
            while not board.runners:  # the subscription is live once a heartbeat gets through
                beat = Heartbeat(
                    runner_id="r-one",
                    backend="bwrap",
                    slots=2,
                    running=[task_id],
                    warm=3,
                    warm_agents={"0123456789ab": 2, "ba9876543210": 1},
                )
                await bus.nc.publish(subjects.runner("r-one"), encode(beat))
                await asyncio.sleep(0.05)
            for event in (
                Accepted(task_id=task_id, seq=1, ts=now, kind="task", key_id="tb_x", profile="developer", model="claude-haiku-4-5"),
                Started(task_id=task_id, seq=2, ts=now, runner_id="r-one", backend="bwrap"),
                Finished(task_id=task_id, seq=3, ts=now, status="succeeded", result="all done", cost_usd=0.125),
            ):
                await bus.publish(subjects.events(task_id), event)
            while task_id not in board.tasks or board.tasks[task_id]["status"] != "succeeded":
                await asyncio.sleep(0.05)
    finally:
        stop.set()
        await follower
    text = _text(board)
    assert "r-one" in text and "1/2" in text and task_id in text
    assert "3: 2 x 0123456789ab, 1 x ba9876543210" in text  # warm agents per class
    assert "succeeded" in text and "0.1250" in text and "claude-haiku-4-5" in text and "all done" in text
    assert "runner" in text and "42" in text and "ready" in text
    assert OFFLINE_LABEL in text and "Ctrl-C stops everything" in text


def test_the_admin_key_is_in_the_panel_only_when_just_created(nats_url: str, subjects: Subjects) -> None:
    fresh = _text(StatusBoard(_info(nats_url, subjects), list, admin_key="tb_" + "k" * 43))
    later = _text(StatusBoard(_info(nats_url, subjects), list))
    assert "tb_" + "k" * 43 in fresh and "shown once" in fresh
    assert "tb_AbCd1234..." in later and "taskbus keys create --profile admin" in later
    assert "tb_" + "k" * 43 not in later


def test_the_panel_keeps_only_the_most_recent_tasks(nats_url: str, subjects: Subjects) -> None:
    board = StatusBoard(_info(nats_url, subjects), list)
    now = datetime.now(UTC)
    ids = [new_task_id() for _ in range(12)]
    for task_id in ids:
        board.note_event(Started(task_id=task_id, seq=2, ts=now, runner_id="r", backend="bwrap"))
    assert list(board.tasks) == ids[-8:]
    assert all(row["status"] == "running" for row in board.tasks.values())
