"""The task registry in KV: ``t.<task_id>`` holds the record; two small indexes make the
listings cheap without ever listing the whole bucket:

- ``k.<key_id>.<task_id>``: ``{"c": created}``, written once when
  the task is admitted, so the bucket's stream holds a key's index entries in admission
  order and a listing reads them newest first, only as far back as it needs
  (``_kv.newest``); the status is the record's;
- ``live.<task_id>``: present while the task is ``accepted`` or ``running`` (what a
  restarted server resumes following), deleted when it finishes.

Admission writes the three at once (one round trip); a status change writes the record
only (and deletes ``live`` when the task finishes); get_task is one direct get.

Retention: the bucket's max age (``TASKBUS_TASK_RETENTION_DAYS``, set by
``bus.ensure_control_plane``) drops every entry that long after its last write, delete
markers included, so the bucket holds only the last retention period's tasks. A task id
carries its creation time (``bus.new_task_id``): ``get`` of one older than the retention
says that it expired.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.js.errors import InvalidKeyError, KeyNotFoundError, KeyWrongLastSequenceError

from bus import FINISHED_STATUSES, InvalidInput, NotFound

from ._kv import CasEntries, Doc, dumps, newest, scan
from ._tasks import LIVE_STATUSES, STATUSES, SUMMARY_CHARS, TaskRecord


def task_key(task_id: str) -> str:
    return f"t.{task_id}"


def check_status(status: str) -> None:
    if status not in STATUSES:
        raise InvalidInput(f"task status {status!r} is not one of {', '.join(STATUSES)}")


def _record(raw: bytes) -> TaskRecord:
    return msgspec.json.decode(raw, type=TaskRecord)


_CROCKFORD = {c: i for i, c in enumerate("0123456789ABCDEFGHJKMNPQRSTVWXYZ")}


def created_from_id(task_id: str) -> datetime | None:
    """The creation time a ``bus.new_task_id`` id carries (its first 48 bits: milliseconds);
    None for an id of another form (a caller's own)."""
    body = task_id.removeprefix("t_")
    if len(body) != 26 or len(task_id) != 28:
        return None
    value = 0
    for char in body:
        digit = _CROCKFORD.get(char.upper())
        if digit is None:
            return None
        value = value * 32 + digit
    try:
        return datetime.fromtimestamp((value >> 80) / 1000, UTC)
    except (OverflowError, ValueError, OSError):
        return None


def _newest_first(records: list[TaskRecord], limit: int) -> list[TaskRecord]:
    records.sort(key=lambda r: (r.created_at, r.task_id), reverse=True)
    return records[:limit]


class Registry:
    def __init__(self, kv: Any) -> None:
        self.kv = kv
        self._cas = CasEntries(kv)
        self._retention_s: float | None = None

    async def get(self, task_id: str) -> TaskRecord:
        try:
            entry = await self.kv.get(task_key(task_id))
        except (KeyNotFoundError, InvalidKeyError):  # a malformed id is as unknown as a missing one
            raise await self._missing(task_id) from None
        return _record(entry.value)

    async def retention_s(self) -> float:
        """The bucket's max age in seconds (0: records never expire); read once."""
        if self._retention_s is None:
            self._retention_s = float((await self.kv._js.stream_info(self.kv._stream)).config.max_age or 0.0)
        return self._retention_s

    async def _missing(self, task_id: str) -> NotFound:
        """NotFound for ``task_id``, saying it expired when its id is older than the retention."""
        created = created_from_id(task_id)
        if created is not None:
            retention = await self.retention_s()
            if retention and created.timestamp() < time.time() - retention:
                days = retention / 86_400
                return NotFound(
                    f"task {task_id} has expired: its id dates from {created:%Y-%m-%d %H:%M} UTC and task records are "
                    f"kept {days:g} day(s) after their last change (TASKBUS_TASK_RETENTION_DAYS); its events may "
                    "still be in the audit log (`taskbus audit search --task`)",
                    task_id=task_id,
                    expired=True,
                )
        return NotFound(f"no task {task_id!r}", task_id=task_id)

    async def record(
        self,
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
        """Create the task; recording the same task id again returns the existing record."""
        check_status(status)
        if kind not in ("complete", "task"):
            raise InvalidInput(f"task kind {kind!r} is not 'complete' or 'task'")
        record = TaskRecord(
            task_id=task_id,
            key_id=key_id,
            profile=profile,
            kind=kind,
            status=status,
            reserved_usd=float(reserved),
            cost_usd=None,
            model=model,
            created_at=now,
            updated_at=now,
            finished_at=None,
            result_summary=None,
            error_code=None,
        )
        live = [self.kv.put(f"live.{task_id}", b"1")] if status in LIVE_STATUSES else []
        results = await asyncio.gather(
            self.kv.create(task_key(task_id), msgspec.json.encode(record)), self._index(record), *live, return_exceptions=True
        )
        if isinstance(results[0], KeyWrongLastSequenceError):  # recorded before: put its indexes back
            existing = await self.get(task_id)
            await self._index(existing)
            if existing.status not in LIVE_STATUSES:
                await self.kv.delete(f"live.{task_id}")
            return existing, False
        for result in results:
            if isinstance(result, BaseException):
                raise result
        revision = results[0]
        assert not isinstance(revision, BaseException)  # raised just above
        self._cas.remember(task_key(task_id), msgspec.to_builtins(record), int(revision))  # its update skips a read
        return record, True

    async def _index(self, record: TaskRecord) -> None:
        await self.kv.put(f"k.{record.key_id}.{record.task_id}", dumps({"c": record.created_at.timestamp()}))

    async def update(
        self,
        task_id: str,
        *,
        status: str,
        now: datetime,
        cost: float | None = None,
        result_summary: str | None = None,
        error_code: str | None = None,
        model: str | None = None,
    ) -> tuple[TaskRecord, bool]:
        """A terminal status is final: later updates return the record unchanged."""
        check_status(status)

        def change(doc: Doc | None) -> tuple[Doc | None, tuple[TaskRecord, bool]]:
            if doc is None:
                raise NotFound(f"no task {task_id!r}", task_id=task_id)
            current = msgspec.convert(doc, TaskRecord)
            if current.status in FINISHED_STATUSES:
                return None, (current, False)
            summary = None if result_summary is None else result_summary[:SUMMARY_CHARS]
            new = msgspec.structs.replace(
                current,
                status=status,
                updated_at=now,
                finished_at=now if status in FINISHED_STATUSES else None,
                cost_usd=cost if cost is not None else current.cost_usd,
                result_summary=summary if summary is not None else current.result_summary,
                error_code=error_code if error_code is not None else current.error_code,
                model=model if model is not None else current.model,
            )
            return msgspec.to_builtins(new), (new, True)

        record, changed = await self._cas.change(task_key(task_id), change)
        if changed and status in FINISHED_STATUSES:  # the key index keeps its admission-order place: not rewritten
            self._cas.forget(task_key(task_id))  # a finished task is not written again
            await self.kv.delete(f"live.{task_id}")
        return record, changed

    async def list(self, key_id: str | None = None, *, status: str | None = None, limit: int = 50) -> list[TaskRecord]:
        """Newest first (admission order). Reads the key index (``k.<key_id>.>``, or ``k.>`` for
        every key's tasks) backwards from the newest entry and stops once ``limit`` records
        match: the cost grows with ``limit`` (and, with a ``status``, with how far back the
        matches are), not with the registry's size. Live statuses without a key read only
        the live index."""
        if limit < 1:
            raise InvalidInput(f"limit must be at least 1 (got {limit})")
        if status is not None:
            check_status(status)
        if key_id is None and status in LIVE_STATUSES:
            ids = [k[len("live.") :] for k, _ in await scan(self.kv, "live.>")]
            return _newest_first(await self._records(ids, status), limit)
        records: list[TaskRecord] = []
        async for batch in newest(self.kv, f"k.{key_id}.>" if key_id is not None else "k.>"):
            records.extend(await self._records([key.rsplit(".", 1)[1] for key, _ in batch], status))
            if len(records) >= limit:
                break
        return _newest_first(records, limit)

    async def _records(self, task_ids: Sequence[str], status: str | None) -> builtins.list[TaskRecord]:
        """The records of ``task_ids`` that exist and (``status``) have that status."""
        records: builtins.list[TaskRecord] = []
        for start in range(0, len(task_ids), 256):
            batch = await asyncio.gather(*(self._maybe(t) for t in task_ids[start : start + 256]))
            records.extend(r for r in batch if r is not None and (status is None or r.status == status))
        return records

    async def _maybe(self, task_id: str) -> TaskRecord | None:
        try:
            return await self.get(task_id)
        except NotFound:
            return None
