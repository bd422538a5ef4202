"""The watched in-memory view of the control bucket: keys (by hash and prefix), profiles,
per-account budget overrides.

Authentication and policy resolution read only this view: no disk, no round trip. A KV
watcher applies every change (from any server) as it is stored; ``caught_up(revision)``
lets a writer wait until its own write is visible here (read-your-writes). After the
connection reconnects (a NATS restart, a node of a cluster lost) or the watcher fails,
the view loads the bucket again with a new watcher: the old one's server-side consumer
may be gone, and a change missed then (a tightened profile) must not be ignored.

Entries: ``key.<prefix>`` (the KeyRecord plus the key's SHA-256, never the key),
``profile.<name>`` (the profile), ``budget.<account>`` (day/month override).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError

from bus import Backoff, BusTimeout

from ._keys import KeyRecord
from ._kv import Doc, loads
from ._profiles import Profile, decode_profile

logger = logging.getLogger(__name__)

KEY, PROFILE, BUDGET = "key.", "profile.", "budget."
READY_TIMEOUT_S = 30.0
RECONNECT_CHECK_S = 0.5
PROBE_S = 5.0
"""How often the view compares its revision with the bucket's last sequence. A watcher whose
server-side consumer was lost with a cluster node delivers nothing and says nothing (nats-py
notices only after two missed 5 s heartbeats, and retries that once per 10 s): a view behind
the bucket on two probes in a row loads again."""
STATUS_TIMEOUT_S = 2.0
"""The bucket status request of a probe (a JetStream API request: it can queue under load)."""
OWN_WRITE_WAIT_S = 2.0
"""How long ``caught_up`` waits for the watcher before it loads the view again itself: the
write is known to be stored, so not seeing it means the watcher is deaf."""


class StoredKey(msgspec.Struct, frozen=True, kw_only=True):
    record: KeyRecord
    hash: str


def encode_key(record: KeyRecord, digest: str) -> bytes:
    return msgspec.json.encode(StoredKey(record=record, hash=digest))


class ControlView:
    def __init__(self, kv: Any, *, reconnects: Callable[[], int] = lambda: 0) -> None:
        self.kv = kv
        self._reconnects = reconnects
        """The connection's reconnect count (``Bus.reconnects``): a change means watch again."""
        self.keys: dict[str, StoredKey] = {}
        self.by_hash: dict[str, KeyRecord] = {}
        self.profiles: dict[str, Profile] = {}
        self.budgets: dict[str, Doc] = {}
        self.revisions: dict[str, int] = {}
        """Entry -> the revision this view holds (the ``last`` of a compare-and-set)."""
        self.revision = 0
        """The stream sequence of the last change applied."""
        self._changed = asyncio.Condition()
        self._reload = asyncio.Event()
        """Set to make the follower load the view again now (``caught_up`` did not see a write)."""
        self._behind_since: int | None = None
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load every entry, then follow changes in the background."""
        self._watcher = await self._load()
        self._task = asyncio.create_task(self._follow(), name="control-view")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await self._stop_watcher()

    async def _stop_watcher(self) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            try:
                await watcher.stop()
            except Exception as exc:  # the connection may already be closed
                logger.debug("control view watcher stop: %s", exc)

    async def _load(self) -> Any:
        """A new watcher, with every current entry applied (and entries gone since the
        last load dropped); returns the watcher, positioned after the initial values."""
        watcher = await self.kv.watchall()
        seen: set[str] = set()
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                while (entry := await watcher.updates(timeout=READY_TIMEOUT_S)) is not None:
                    self._apply(entry)
                    seen.add(entry.key)
        except BaseException as exc:
            await watcher.stop()
            if isinstance(exc, TimeoutError):
                raise BusTimeout(f"loading the control plane ({self.kv._name}) took over {READY_TIMEOUT_S:g}s") from None
            raise
        for key in set(self.revisions) - seen:  # deleted while this view was not watching
            self._forget(key)
        return watcher

    async def _last_seq(self) -> int:
        """The bucket stream's last sequence, 0 when it does not answer right now."""
        try:
            async with asyncio.timeout(STATUS_TIMEOUT_S):
                return int((await self.kv.status()).stream_info.state.last_seq)
        except Exception as exc:  # the caller asks again later
            logger.debug("control view: bucket status: %s", exc)
            return 0

    async def _follow(self) -> None:
        """Apply changes as they are stored; after a reconnect or a failed watcher, load again."""
        backoff = Backoff(0.5, 10.0)
        reconnects = self._reconnects()
        while True:
            pump = asyncio.create_task(self._pump(self._watcher), name="control-view-pump")
            next_probe = time.monotonic() + PROBE_S
            stale = ""
            try:
                while not pump.done() and self._reconnects() == reconnects and not self._reload.is_set() and not stale:
                    await asyncio.wait({pump}, timeout=RECONNECT_CHECK_S)
                    if time.monotonic() >= next_probe:
                        stale = await self._probe()
                        next_probe = time.monotonic() + PROBE_S
            finally:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
            if self._reconnects() != reconnects:
                reason = "the connection reconnected"
            elif self._reload.is_set():
                reason = "a write stored in the bucket did not reach the watcher"
            else:
                reason = stale or _ended(pump)
            reconnects = self._reconnects()
            # a reload for a probe's verdict covers the bucket up to the revision the probe saw:
            # should that message be gone (a purged delete marker), the view still counts it
            # seen, or the next probes would find it behind for ever
            floor = (self._behind_since or 0) if stale else 0
            self._reload.clear()
            self._behind_since = None
            await self._stop_watcher()
            while True:
                try:
                    self._watcher = await self._load()
                    self.revision = max(self.revision, floor)
                    break
                except Exception as exc:
                    delay = backoff.next_delay()
                    logger.warning("control view: loading again failed (%s); retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
            backoff.reset()
            logger.info("control view: loaded again (%s)", reason)
            async with self._changed:
                self._changed.notify_all()

    async def _probe(self) -> str:
        """Why the watcher looks deaf ("" when it does not): the bucket's last sequence was
        past the view's revision at the previous probe and the view has not reached it since."""
        last = await self._last_seq()
        if self._behind_since is not None and self.revision < self._behind_since:
            return f"the watcher did not deliver the bucket's revision {self._behind_since} within {PROBE_S:g}s"
        self._behind_since = last if last > self.revision else None
        return ""

    async def _pump(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None:
                continue
            self._apply(entry)
            async with self._changed:
                self._changed.notify_all()

    async def caught_up(self, revision: int, timeout: float = 10.0) -> None:
        """Wait until the change stored at ``revision`` is in this view; when the watcher has
        not delivered it after ``OWN_WRITE_WAIT_S``, load the view again (the write is stored,
        so the watcher is deaf: its consumer went with a cluster node)."""
        with contextlib.suppress(BusTimeout):
            return await self.wait_for(lambda: self.revision >= revision, f"revision {revision}", timeout=min(timeout, OWN_WRITE_WAIT_S))
        self._reload.set()
        await self.wait_for(lambda: self.revision >= revision, f"revision {revision}", timeout=max(timeout - OWN_WRITE_WAIT_S, 1.0))

    async def wait_for(self, predicate: Callable[[], bool], what: str, *, timeout: float = 10.0) -> None:
        """Wait until ``predicate()`` holds for this view (checked after every applied change)."""
        try:
            async with asyncio.timeout(timeout), self._changed:
                await self._changed.wait_for(predicate)
        except TimeoutError:
            raise BusTimeout(f"the control-plane view did not see {what} within {timeout:g}s") from None

    async def fetch_key(self, prefix: str) -> StoredKey | None:
        """Read ``key.<prefix>`` from the bucket itself and put it in the view: a key created
        through another server moments ago may not have reached this view's watcher yet. The
        view's ``revision`` is left alone (the watcher still delivers the change in order)."""
        try:
            entry = await self.kv.get(KEY + prefix)
        except KeyNotFoundError:
            return None
        if int(entry.revision) >= self.revisions.get(KEY + prefix, 0):
            self.revisions[KEY + prefix] = int(entry.revision)
            self._apply_key(prefix, entry.value)
        return self.keys.get(prefix)

    def _forget(self, key: str) -> None:
        """``key`` is gone from the bucket."""
        self.revisions.pop(key, None)
        self._set(key, None)

    def _apply(self, entry: Any) -> None:
        key: str = entry.key
        deleted = entry.operation in ("DEL", "PURGE")
        self.revision = max(self.revision, int(entry.revision))
        if deleted:
            self.revisions.pop(key, None)
        else:
            self.revisions[key] = int(entry.revision)
        self._set(key, None if deleted else entry.value)

    def _set(self, key: str, value: bytes | None) -> None:
        try:
            if key.startswith(KEY):
                self._apply_key(key[len(KEY) :], value)
            elif key.startswith(PROFILE):
                name = key[len(PROFILE) :]
                if value is None:
                    self.profiles.pop(name, None)
                else:
                    self.profiles[name] = decode_profile(value)
            elif key.startswith(BUDGET):
                account = key[len(BUDGET) :]
                if value is None:
                    self.budgets.pop(account, None)
                else:
                    self.budgets[account] = loads(value)
        except (msgspec.DecodeError, ValueError) as exc:  # one bad entry must not blind the server
            logger.error("control-plane entry %s is not readable, ignored: %s", key, exc)

    def _apply_key(self, prefix: str, value: bytes | None) -> None:
        old = self.keys.pop(prefix, None)
        if old is not None:
            self.by_hash.pop(old.hash, None)
        if value is None:
            return
        stored = msgspec.json.decode(value, type=StoredKey)
        self.keys[prefix] = stored
        self.by_hash[stored.hash] = stored.record


def _ended(pump: asyncio.Task[None]) -> str:
    if pump.cancelled():
        return "the watcher was cancelled"
    exc = pump.exception()
    return "the watcher ended" if exc is None else f"the watcher failed: {exc!r}"
