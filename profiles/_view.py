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
import logging
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

    async def _follow(self) -> None:
        """Apply changes as they are stored; after a reconnect or a failed watcher, load again."""
        backoff = Backoff(0.5, 10.0)
        reconnects = self._reconnects()
        while True:
            pump = asyncio.create_task(self._pump(self._watcher), name="control-view-pump")
            try:
                while not pump.done() and self._reconnects() == reconnects:
                    await asyncio.wait({pump}, timeout=RECONNECT_CHECK_S)
            finally:
                pump.cancel()
                await asyncio.gather(pump, return_exceptions=True)
            reason = "the connection reconnected" if self._reconnects() != reconnects else _ended(pump)
            reconnects = self._reconnects()
            await self._stop_watcher()
            while True:
                try:
                    self._watcher = await self._load()
                    break
                except Exception as exc:
                    delay = backoff.next_delay()
                    logger.warning("control view: loading again failed (%s); retrying in %.1fs", exc, delay)
                    await asyncio.sleep(delay)
            backoff.reset()
            logger.info("control view: loaded again (%s)", reason)
            async with self._changed:
                self._changed.notify_all()

    async def _pump(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None:
                continue
            self._apply(entry)
            async with self._changed:
                self._changed.notify_all()

    async def caught_up(self, revision: int, timeout: float = 10.0) -> None:
        """Wait until the change stored at ``revision`` is in this view."""
        await self.wait_for(lambda: self.revision >= revision, f"revision {revision}", timeout=timeout)

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
