"""The task registry: one row per accepted task (who, what, status, reserved, cost).

Statuses: ``accepted`` and ``running`` while a task is alive, then one of the terminal
``bus.FINISHED_STATUSES``. A terminal status is final: later updates are ignored
(the first ``finished`` wins, as on the bus).
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import aiosqlite
import msgspec

from bus import FINISHED_STATUSES, InvalidInput, NotFound

LIVE_STATUSES: tuple[str, ...] = ("accepted", "running")
STATUSES: tuple[str, ...] = LIVE_STATUSES + FINISHED_STATUSES
SUMMARY_CHARS = 500


class TaskRecord(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    key_id: str
    profile: str
    kind: str
    status: str
    reserved_usd: float
    cost_usd: float | None
    model: str | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    result_summary: str | None
    error_code: str | None


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


def _record(row: Any) -> TaskRecord:
    return TaskRecord(
        task_id=row["task_id"],
        key_id=row["key_id"],
        profile=row["profile"],
        kind=row["kind"],
        status=row["status"],
        reserved_usd=row["reserved"],
        cost_usd=row["cost"],
        model=row["model"],
        created_at=_ts(row["created_at"]),  # type: ignore[arg-type]
        updated_at=_ts(row["updated_at"]),  # type: ignore[arg-type]
        finished_at=_ts(row["finished_at"]),
        result_summary=row["result_summary"],
        error_code=row["error_code"],
    )


def _check_status(status: str) -> None:
    if status not in STATUSES:
        raise InvalidInput(f"task status {status!r} is not one of {', '.join(STATUSES)}")


async def get_task(db: aiosqlite.Connection, task_id: str) -> TaskRecord:
    async with db.execute("SELECT * FROM tasks WHERE task_id = ?", (task_id,)) as cur:
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"no task {task_id!r}", task_id=task_id)
    return _record(row)


async def record_task(
    db: aiosqlite.Connection,
    *,
    task_id: str,
    key_id: str,
    profile: str,
    kind: str,
    reserved: float,
    now: datetime,
    model: str | None = None,
    status: str = "accepted",
) -> tuple[TaskRecord, bool]:
    """Insert the task; recording the same task id again returns the existing row."""
    _check_status(status)
    if kind not in ("complete", "task"):
        raise InvalidInput(f"task kind {kind!r} is not 'complete' or 'task'")
    ts = now.timestamp()
    async with db.execute(
        "INSERT INTO tasks (task_id, key_id, profile, kind, status, reserved, model, created_at, updated_at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(task_id) DO NOTHING",
        (task_id, key_id, profile, kind, status, float(reserved), model, ts, ts),
    ) as cur:
        created = cur.rowcount == 1
    return await get_task(db, task_id), created


async def update_task(
    db: aiosqlite.Connection,
    task_id: str,
    *,
    status: str,
    now: datetime,
    cost: float | None = None,
    result_summary: str | None = None,
    error_code: str | None = None,
    model: str | None = None,
) -> tuple[TaskRecord, bool]:
    _check_status(status)
    current = await get_task(db, task_id)
    if current.status in FINISHED_STATUSES:
        return current, False
    ts = now.timestamp()
    summary = None if result_summary is None else result_summary[:SUMMARY_CHARS]
    await db.execute(
        "UPDATE tasks SET status = ?, updated_at = ?, finished_at = ?,"
        " cost = COALESCE(?, cost), result_summary = COALESCE(?, result_summary),"
        " error_code = COALESCE(?, error_code), model = COALESCE(?, model) WHERE task_id = ?",
        (
            status,
            ts,
            ts if status in FINISHED_STATUSES else None,
            cost,
            summary,
            error_code,
            model,
            task_id,
        ),
    )
    return await get_task(db, task_id), True


async def list_tasks(
    db: aiosqlite.Connection,
    key_id: str | None = None,
    *,
    status: str | None = None,
    limit: int = 50,
) -> list[TaskRecord]:
    """Newest first. ``key_id=None`` lists every key's tasks (operators)."""
    if limit < 1:
        raise InvalidInput(f"limit must be at least 1 (got {limit})")
    where, args = [], []
    if key_id is not None:
        where.append("key_id = ?")
        args.append(key_id)
    if status is not None:
        _check_status(status)
        where.append("status = ?")
        args.append(status)
    sql = "SELECT * FROM tasks"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += " ORDER BY created_at DESC, task_id DESC LIMIT ?"
    async with db.execute(sql, (*args, limit)) as cur:
        return [_record(row) for row in await cur.fetchall()]
