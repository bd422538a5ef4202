"""Compare-and-set on one JetStream KV entry, the one write primitive of the control plane.

``CasEntry`` keeps the last value and revision this process saw of each entry, so the
common case (one writer, or the last writer was us) is a single ``kv.update(last=rev)``
round trip; on a revision conflict it reads the entry again and retries with jittered
backoff (``bus.retry_async``). A per-entry lock serializes this process's own writers so
they never conflict with each other: conflicts only come from other processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import msgspec
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KV_OP

from bus import LEADERLESS, Backoff, BusTimeout, InvalidInput, retry_async

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


class _Handoff(Exception):
    """The caller writing a batch was cancelled before answering: queue the change again."""


SAFE_KEY = re.compile(r"^[A-Za-z0-9_=-]+(\.[A-Za-z0-9_=-]+)*$")
"""What a control-plane entry's key may be: dot-separated tokens of letters, digits, ``_``,
``=``, ``-``. Ids arrive from callers (a task id in ``get_task``, a key prefix in the CLI);
one holding ``..``, ``*``, ``>``, a space or a slash would become a malformed or wildcard
NATS subject, which the server answers with a permissions error or a closed connection;
one longer than ``MAX_KEY`` makes a control line over NATS's limit, and the server closes
the whole connection for it."""

MAX_KEY = 512


def safe_key(key: str) -> bool:
    return len(key) <= MAX_KEY and SAFE_KEY.match(key) is not None


class SafeKeys:
    """A KV bucket that refuses keys outside ``SAFE_KEY`` before anything reaches NATS: a read
    of such a key finds nothing (``KeyNotFoundError``, so callers say "no such task/key"), a
    write is InvalidInput. Everything else is the bucket's own.

    With ``patience_s`` (a replicated bucket: ``Bus.publish_patience_s``), a read or write
    that reached no stream leader is tried again until that many seconds have passed, as a
    JetStream publish is: in a cluster a node's death leaves its buckets leaderless for a few
    seconds (longer on a loaded machine), and every admission in that window would otherwise
    be refused."""

    def __init__(self, kv: Any, *, patience_s: float = 0.0) -> None:
        self._kv = kv
        self._patience_s = patience_s

    def __getattr__(self, name: str) -> Any:
        return getattr(self._kv, name)

    async def _patient(self, call: Callable[[], Awaitable[T]]) -> T:
        if self._patience_s <= 0:
            return await call()

        def log_retry(exc: BaseException, attempt: int, delay: float) -> None:
            logger.debug("KV %s has no leader (%s); retry %d in %.2fs", getattr(self._kv, "_name", "?"), type(exc).__name__, attempt, delay)

        return await retry_async(
            call, on=LEADERLESS, attempts=1, backoff=Backoff(0.05, 1.0), on_retry=log_retry, patience_s=self._patience_s
        )

    async def get(self, key: str, *args: Any, **kwargs: Any) -> Any:
        if not safe_key(key):
            raise KeyNotFoundError()
        return await self._patient(lambda: self._kv.get(key, *args, **kwargs))

    def _writable(self, key: str) -> str:
        if not safe_key(key):
            raise InvalidInput(f"{key[:80]!r} is not a valid name (letters, digits, '_', '-' only)")
        return key

    async def put(self, key: str, *args: Any, **kwargs: Any) -> int:
        key = self._writable(key)
        return int(await self._patient(lambda: self._kv.put(key, *args, **kwargs)))

    async def create(self, key: str, *args: Any, **kwargs: Any) -> int:
        key = self._writable(key)
        return int(await self._patient(lambda: self._kv.create(key, *args, **kwargs)))

    async def update(self, key: str, *args: Any, **kwargs: Any) -> int:
        key = self._writable(key)
        return int(await self._patient(lambda: self._kv.update(key, *args, **kwargs)))

    async def delete(self, key: str, *args: Any, **kwargs: Any) -> bool:
        if not safe_key(key):
            return False
        return bool(await self._patient(lambda: self._kv.delete(key, *args, **kwargs)))


def dumps(doc: Doc) -> bytes:
    return msgspec.json.encode(doc)


def loads(raw: bytes | None) -> Doc:
    return msgspec.json.decode(raw) if raw else {}


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
    only the matching entries are read), deleted ones left out.

    nats-py's watcher says "no more initial values" at once when the new consumer reports
    nothing pending; on a replicated stream that report can come before the consumer has
    counted (seen on a 3-node cluster: a listing came back empty). So an empty answer is
    checked against the stream's own count of messages on those subjects, and the watch
    is tried again while the two disagree."""
    for _ in range(EMPTY_SCAN_CHECKS):
        out = await _watch_once(kv, pattern, timeout)
        if out or not await _has_messages(kv, pattern):
            return out
        await asyncio.sleep(0.05)
    return out


EMPTY_SCAN_CHECKS = 4


async def _has_messages(kv: Any, pattern: str) -> bool:
    """Whether the bucket's stream holds any message on ``pattern``'s subjects (live or
    deleted: a delete marker is a message too, so True may still mean "nothing live")."""
    try:
        info = await kv._js.stream_info(kv._stream, subjects_filter=f"{kv._pre}{pattern}")
    except Exception as exc:  # the check is a second opinion; without it the watch's answer stands
        logger.debug("cannot count %s in %s: %s", pattern, kv._stream, exc)
        return False
    return bool(info.state.subjects)


async def _watch_once(kv: Any, pattern: str, timeout: float) -> list[tuple[str, bytes]]:
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


NEWEST_FIRST_WINDOW = 256
"""Sequences of a bucket's stream ``newest`` reads first; each further window is twice as long."""
NEWEST_BATCH = 256


async def newest(kv: Any, pattern: str, *, timeout: float = SCAN_TIMEOUT_S) -> AsyncIterator[list[tuple[str, bytes]]]:
    """The current entries whose key matches ``pattern``, last written first, in batches:
    the bucket's stream read backwards one window of sequences at a time (each twice the
    last), so a caller that stops after the first batches reads only the newest part of the
    bucket, never the whole of it. With one entry per key (history 1), each key is read once.
    Deleted entries are left out."""
    info = await kv._js.stream_info(kv._stream)
    first, hi = max(1, info.state.first_seq), info.state.last_seq + 1  # an empty stream: first 0, last 0
    window = NEWEST_FIRST_WINDOW
    while hi > first:
        lo = max(first, hi - window)
        found = await _range(kv, pattern, lo, hi, timeout)
        if found:
            yield found[::-1]
        hi, window = lo, window * 2


async def _range(kv: Any, pattern: str, lo: int, hi: int, timeout: float) -> list[tuple[str, bytes]]:
    """The entries matching ``pattern`` at stream sequences ``lo`` to ``hi - 1``, oldest first.

    A new consumer on a replicated stream can report nothing pending before it has counted
    (see ``scan``): an empty answer is checked with one get of the first matching message
    at or after ``lo``, and the window read again while the two disagree."""
    for _ in range(EMPTY_SCAN_CHECKS):
        out, counted = await _range_once(kv, pattern, lo, hi, timeout)
        if counted:
            return out
        first = await _first_at_or_after(kv, pattern, lo)
        if first is None or first >= hi:
            return out
        await asyncio.sleep(0.05)
    return out


async def _first_at_or_after(kv: Any, pattern: str, seq: int) -> int | None:
    """The stream sequence of the first message matching ``pattern`` at or after ``seq``."""
    try:
        msg = await kv._js.get_msg(kv._stream, seq=seq, subject=f"{kv._pre}{pattern}", next=True)
    except NotFoundError:
        return None
    return int(msg.seq) if msg.seq is not None else None


async def _range_once(kv: Any, pattern: str, lo: int, hi: int, timeout: float) -> tuple[list[tuple[str, bytes]], int]:
    """One pull consumer starting at ``lo``, deleted once read: (the entries before ``hi``,
    how many messages the consumer counted at its creation)."""
    js = kv._js
    config = ConsumerConfig(
        deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
        opt_start_seq=lo,
        ack_policy=AckPolicy.NONE,
        mem_storage=True,
        num_replicas=1,
        inactive_threshold=timeout,
    )
    sub = await js.pull_subscribe(f"{kv._pre}{pattern}", stream=kv._stream, config=config)
    out: list[tuple[str, bytes]] = []
    name: str | None = None
    counted = 0
    try:
        async with asyncio.timeout(timeout):
            consumer = await sub.consumer_info()
            name, counted = consumer.name, consumer.num_pending
            pending = counted
            while pending:
                for msg in await sub.fetch(min(NEWEST_BATCH, pending), timeout=timeout):
                    pending = msg.metadata.num_pending
                    if msg.metadata.sequence.stream >= hi:
                        return out, counted
                    if not (msg.headers and msg.headers.get(KV_OP)):  # a delete or purge marker
                        out.append((msg.subject[len(kv._pre) :], msg.data))
    except TimeoutError:
        raise BusTimeout(f"reading the newest entries {pattern!r} took over {timeout:g}s; is JetStream up?") from None
    finally:
        await sub.unsubscribe()
        if name is not None:  # not left to its inactivity threshold: listings may come in bursts
            with contextlib.suppress(NotFoundError, TimeoutError):
                await js.delete_consumer(kv._stream, name)
    return out, counted


class CasEntries:
    """Compare-and-set writers of the entries of one bucket, with a bounded cache.

    Group commit: while one write of an entry is in flight, the changes that arrive for
    the same entry queue up and the next write applies them all, in order, in one
    compare-and-set (each caller still gets its own result or refusal). A burst of
    admissions against one account costs a few round trips, not one each."""

    def __init__(self, kv: Any) -> None:
        self.kv = kv
        self._cache: OrderedDict[str, tuple[Doc | None, int]] = OrderedDict()
        self._waiting: dict[str, list[tuple[Change[Any], asyncio.Future[Any], bool]]] = {}
        self._leading: set[str] = set()

    def forget(self, key: str) -> None:
        self._cache.pop(key, None)

    def revision(self, key: str) -> int:
        """The revision of ``key`` this process last read or wrote (0: none cached)."""
        cached = self._cache.get(key)
        return cached[1] if cached is not None else 0

    def cached(self, key: str) -> Doc | None:
        """The value of ``key`` this process last read or wrote (None: none cached)."""
        cached = self._cache.get(key)
        return cached[0] if cached is not None else None

    def remember(self, key: str, value: Doc, revision: int) -> None:
        """What this process just created at ``revision`` (its next change skips the read)."""
        self._remember(key, value, revision)

    async def change(self, key: str, change: Change[T], *, fresh: bool = False) -> T:
        """Apply ``change`` atomically to ``key`` and return its result (``fresh``: read
        first instead of trusting the cached revision)."""
        while True:
            future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(key, []).append((change, future, fresh))
            if key not in self._leading:  # no write of this entry in flight: lead one
                await self._lead(key)
            try:
                return await future
            except _Handoff:  # the leader was cancelled before answering: queue again
                continue

    async def _lead(self, key: str) -> None:
        """Write the queued changes of ``key`` until none is left (the others await theirs)."""
        self._leading.add(key)
        batch: list[tuple[Change[Any], asyncio.Future[Any], bool]] = []
        try:
            while batch := self._waiting.pop(key, []):
                await self._apply(key, [(c, f) for c, f, _ in batch], any(fresh for _, _, fresh in batch))
        finally:
            self._leading.discard(key)
            for _, future, _ in batch + self._waiting.pop(key, []):
                if not future.done():
                    future.set_exception(_Handoff())
                    future.exception()  # retrieved: a cancelled leader's own one is never awaited

    async def _apply(self, key: str, batch: list[tuple[Change[Any], asyncio.Future[Any]]], fresh: bool) -> None:
        cached = None if fresh else self._cache.get(key)

        async def attempt() -> list[tuple[asyncio.Future[Any], Any, bool]]:
            nonlocal cached
            current, revision = cached if cached is not None else await read(self.kv, key)
            cached = None  # a retry always reads
            doc, dirty, answers = current, False, []
            for change, future in batch:
                try:
                    new, result = change(doc)
                except Exception as exc:  # this caller's refusal; the others go on
                    answers.append((future, exc, True))
                    continue
                if new is not None:
                    doc, dirty = new, True
                answers.append((future, result, False))
            if not dirty:
                self._remember(key, current, revision)
                return answers
            assert doc is not None  # dirty: some change returned a new document
            try:
                written = await self.kv.update(key, dumps(doc), last=revision)
            except KeyWrongLastSequenceError:
                self.forget(key)
                raise _Stale() from None
            self._remember(key, doc, int(written))
            return answers

        try:
            answers = await retry_async(attempt, on=_Stale, attempts=CAS_ATTEMPTS, backoff=Backoff(0.001, 0.05))
        except _Stale:
            error = BusTimeout(f"the control-plane entry {key!r} kept changing under {CAS_ATTEMPTS} attempts to update it; retry")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            return
        except Exception as exc:  # NATS failed: every caller of this batch hears it
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for future, value, failed in answers:
            if future.done():
                continue
            if failed:
                future.set_exception(value)
            else:
                future.set_result(value)

    def _remember(self, key: str, value: Doc | None, revision: int) -> None:
        self._cache[key] = (value, revision)
        self._cache.move_to_end(key)
        while len(self._cache) > MAX_CACHED:
            self._cache.popitem(last=False)
