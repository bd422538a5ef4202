"""Compare-and-set on one JetStream KV entry, the one write primitive of the control plane.

``CasEntry`` keeps the last value and revision this process saw of each entry, so the
common case (one writer, or the last writer was us) is a single ``kv.update(last=rev)``
round trip; on a revision conflict it reads the entry again and retries with jittered
backoff (``bus.retry_async``). A per-entry lock serializes this process's own writers so
they never conflict with each other: conflicts only come from other processes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections import OrderedDict
from collections.abc import Callable
from typing import Any, TypeVar

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from bus import Backoff, BusTimeout, retry_async

logger = logging.getLogger(__name__)

T = TypeVar("T")
Doc = dict[str, Any]
Change = Callable[[Doc | None], tuple[Doc | None, T]]
"""``change(current)`` -> (new value or None for "write nothing", result). Pure: it may run again."""

CAS_ATTEMPTS = 50
MAX_CACHED = 4096
SCAN_TIMEOUT_S = 30.0


class _Stale(Exception):
    """Our cached revision was not the last one: read again and retry."""


def dumps(doc: Doc) -> bytes:
    return json.dumps(doc, separators=(",", ":"), sort_keys=True).encode()


def loads(raw: bytes | None) -> Doc:
    return json.loads(raw) if raw else {}


async def read(kv: Any, key: str) -> tuple[Doc | None, int]:
    """(value, revision) of ``key``; (None, 0) when missing or deleted."""
    try:
        entry = await kv.get(key)
    except KeyNotFoundError as exc:
        deleted = getattr(exc, "entry", None)
        return None, int(deleted.revision) if deleted is not None else 0
    return loads(entry.value), int(entry.revision)


async def scan(kv: Any, pattern: str, *, timeout: float = SCAN_TIMEOUT_S) -> list[tuple[str, bytes]]:
    """The current entries whose key matches ``pattern`` (a watch the server filters, so
    only the matching entries are read), deleted ones left out."""
    watcher = await kv.watch(pattern, ignore_deletes=True)
    out: list[tuple[str, bytes]] = []
    try:
        async with asyncio.timeout(timeout):
            while (entry := await watcher.updates(timeout=timeout)) is not None:
                out.append((entry.key, entry.value))
    except TimeoutError:
        raise BusTimeout(f"reading the entries {pattern!r} took over {timeout:g}s; is JetStream up?") from None
    finally:
        await watcher.stop()
    return out


class CasEntries:
    """Compare-and-set writers of the entries of one bucket, with a bounded cache."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv
        self._cache: OrderedDict[str, tuple[Doc | None, int]] = OrderedDict()
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def forget(self, key: str) -> None:
        self._cache.pop(key, None)

    def revision(self, key: str) -> int:
        """The revision of ``key`` this process last read or wrote (0: none cached)."""
        cached = self._cache.get(key)
        return cached[1] if cached is not None else 0

    async def change(self, key: str, change: Change[T], *, fresh: bool = False) -> T:
        """Apply ``change`` atomically to ``key`` and return its result (``fresh``: read
        first instead of trusting the cached revision)."""
        lock, users = self._locks.get(key, (asyncio.Lock(), 0))
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                return await self._change(key, change, fresh)
        finally:
            lock, users = self._locks[key]
            if users <= 1:  # no one else waits: drop it (memory stays bounded by concurrency)
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)

    async def _change(self, key: str, change: Change[T], fresh: bool) -> T:
        cached = None if fresh else self._cache.get(key)

        async def attempt() -> T:
            nonlocal cached
            current, revision = cached if cached is not None else await read(self.kv, key)
            cached = None  # a retry always reads
            new, result = change(current)
            if new is None:
                self._remember(key, current, revision)
                return result
            try:
                written = await self.kv.update(key, dumps(new), last=revision)
            except KeyWrongLastSequenceError:
                self.forget(key)
                raise _Stale() from None
            self._remember(key, new, int(written))
            return result

        try:
            return await retry_async(attempt, on=_Stale, attempts=CAS_ATTEMPTS, backoff=Backoff(0.001, 0.05))
        except _Stale:
            raise BusTimeout(
                f"the control-plane entry {key!r} kept changing under {CAS_ATTEMPTS} attempts to update it; retry"
            ) from None

    def _remember(self, key: str, value: Doc | None, revision: int) -> None:
        self._cache[key] = (value, revision)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
