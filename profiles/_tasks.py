"""The task registry's record: one per accepted task (who, what, status, reserved, cost);
stored by ``_registry`` in KV.

Statuses: ``accepted`` and ``running`` while a task is alive, then one of the terminal
``bus.FINISHED_STATUSES``. A terminal status is final: later updates are ignored
(the first ``finished`` wins, as on the bus).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from bus import FINISHED_STATUSES

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
    return None if value is None else datetime.fromtimestamp(value, UTC)


def record_from_row(row: Any) -> TaskRecord:
    """A row of the pre-0.6 SQLite ``tasks`` table (``taskbus migrate``)."""
    return TaskRecord(
        task_id=row["task_id"],
        key_id=row["key_id"],
        profile=row["profile"],
        kind=row["kind"],
        status=row["status"],
        reserved_usd=row["reserved"],
        cost_usd=row["cost"],
        model=row["model"],
        created_at=datetime.fromtimestamp(row["created_at"], UTC),  # NOT NULL in the old schema
        updated_at=datetime.fromtimestamp(row["updated_at"], UTC),
        finished_at=_ts(row["finished_at"]),
        result_summary=row["result_summary"],
        error_code=row["error_code"],
    )
