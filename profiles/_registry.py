"""The task registry in KV: ``t.<task_id>`` holds the record; two small indexes make the
listings cheap without ever listing the whole bucket:

- ``k.<key_id>.<task_id>``: ``{"s": status, "c": created}`` (a key's tasks: a watch
  filtered on ``k.<key_id>.>`` reads only that key's entries);
- ``live.<task_id>``: present while the task is ``accepted`` or ``running`` (what a
  restarted server resumes following), deleted when it finishes.

Admission writes the three at once (one round trip); get_task is one direct get.
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import msgspec
from nats.js.errors import InvalidKeyError, KeyNotFoundError, KeyWrongLastSequenceError

from bus import FINISHED_STATUSES, InvalidInput, NotFound

from ._kv import CasEntries, Doc, dumps, loads, scan
from ._tasks import LIVE_STATUSES, STATUSES, SUMMARY_CHARS, TaskRecord


def task_key(task_id: str) -> str:
    return f"t.{task_id}"


def check_status(status: str) -> None:
    if status not in STATUSES:
        raise InvalidInput(f"task status {status!r} is not one of {', '.join(STATUSES)}")


def _record(raw: bytes) -> TaskRecord:
    return msgspec.json.decode(raw, type=TaskRecord)


class Registry:
    def __init__(self, kv: Any) -> None:
        self.kv = kv
        self._cas = CasEntries(kv)

    async def get(self, task_id: str) -> TaskRecord:
        try:
            entry = await self.kv.get(task_key(task_id))
        except (KeyNotFoundError, InvalidKeyError):  # a malformed id is as unknown as a missing one
            raise NotFound(f"no task {task_id!r}", task_id=task_id) from None
        return _record(entry.value)

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
        await self.kv.put(f"k.{record.key_id}.{record.task_id}", dumps({"s": record.status, "c": record.created_at.timestamp()}))

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
        if changed:
            writes = [self._index(record)]
            if status in FINISHED_STATUSES:
                writes.append(self.kv.delete(f"live.{task_id}"))
                self._cas.forget(task_key(task_id))  # a finished task is not written again
            await asyncio.gather(*writes)
        return record, changed

    async def list(self, key_id: str | None = None, *, status: str | None = None, limit: int = 50) -> list[TaskRecord]:
        """Newest first. ``key_id=None``: every key's tasks (operators; reads the whole index).
        Live statuses without a key read only the live index."""
        if limit < 1:
            raise InvalidInput(f"limit must be at least 1 (got {limit})")
        if status is not None:
            check_status(status)
        if key_id is None and status in LIVE_STATUSES:
            ids = [(0.0, k[len("live.") :]) for k, _ in await scan(self.kv, "live.>")]
        else:
            pattern = f"k.{key_id}.>" if key_id is not None else "k.>"
            ids = []
            for key, value in await scan(self.kv, pattern):
                doc = loads(value)
                if status is None or doc.get("s") == status:
                    ids.append((float(doc.get("c", 0)), key.rsplit(".", 1)[1]))
        ids.sort(reverse=True)
        records: list[TaskRecord] = []
        for start in range(0, len(ids), 256):  # the index may be behind the record: check the record's status
            batch = await asyncio.gather(*(self._maybe(t) for _, t in ids[start : start + 256]))
            records.extend(r for r in batch if r is not None and (status is None or r.status == status))
            if len(records) >= limit:
                break
        records.sort(key=lambda r: (r.created_at, r.task_id), reverse=True)
        return records[:limit]

    async def _maybe(self, task_id: str) -> TaskRecord | None:
        try:
            return await self.get(task_id)
        except NotFound:
            return None
