"""The watched in-memory view of the control bucket: keys (by hash and prefix), profiles,
per-account budget overrides.

Authentication and policy resolution read only this view: no disk, no round trip. A KV
watcher applies every change (from any server) as it is stored; ``caught_up(revision)``
lets a writer wait until its own write is visible here (read-your-writes).

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

from bus import BusTimeout

from ._keys import KeyRecord
from ._kv import Doc, loads
from ._profiles import Profile, decode_profile

logger = logging.getLogger(__name__)

KEY, PROFILE, BUDGET = "key.", "profile.", "budget."
READY_TIMEOUT_S = 30.0


class StoredKey(msgspec.Struct, frozen=True, kw_only=True):
    record: KeyRecord
    hash: str


def encode_key(record: KeyRecord, digest: str) -> bytes:
    return msgspec.json.encode(StoredKey(record=record, hash=digest))


class ControlView:
    def __init__(self, kv: Any) -> None:
        self.kv = kv
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
        self._watcher = await self.kv.watchall()
        try:
            async with asyncio.timeout(READY_TIMEOUT_S):
                while (entry := await self._watcher.updates(timeout=READY_TIMEOUT_S)) is not None:
                    self._apply(entry)
        except TimeoutError:
            await self._watcher.stop()
            raise BusTimeout(f"loading the control plane ({self.kv._name}) took over {READY_TIMEOUT_S:g}s") from None
        self._task = asyncio.create_task(self._follow(), name="control-view")

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        if self._watcher is not None:
            try:
                await self._watcher.stop()
            except Exception as exc:  # the connection may already be closed
                logger.debug("control view watcher stop: %s", exc)
            self._watcher = None

    async def _follow(self) -> None:
        async for entry in self._watcher:
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

    def _apply(self, entry: Any) -> None:
        key: str = entry.key
        deleted = entry.operation in ("DEL", "PURGE")
        self.revision = max(self.revision, int(entry.revision))
        if deleted:
            self.revisions.pop(key, None)
        else:
            self.revisions[key] = int(entry.revision)
        try:
            if key.startswith(KEY):
                self._apply_key(key[len(KEY) :], None if deleted else entry.value)
            elif key.startswith(PROFILE):
                name = key[len(PROFILE) :]
                if deleted:
                    self.profiles.pop(name, None)
                else:
                    self.profiles[name] = decode_profile(entry.value)
            elif key.startswith(BUDGET):
                account = key[len(BUDGET) :]
                if deleted:
                    self.budgets.pop(account, None)
                else:
                    self.budgets[account] = loads(entry.value)
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
