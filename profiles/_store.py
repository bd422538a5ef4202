"""``Store``: the async facade over the profiles database (keys, profiles, budgets, tasks).

    async with Store(settings.data_path / "taskbus.db") as store:
        plaintext, key = await store.create_key("developer")

One aiosqlite connection per Store. Every write is one ``BEGIN IMMEDIATE`` transaction,
so checks and writes are atomic across coroutines (serialized by a lock on this
connection) and across processes (serialized by SQLite). The first open of a new file
creates the schema and seeds the shipped default profiles.

Changes to keys, profiles and budgets are handed, after commit, to the optional
``notify`` callable as ``bus.AuditNotice``s; the store is the source of truth and a
failing notifier is logged, never raised.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import aiosqlite
import msgspec

from bus import AuditNotice, InvalidInput, NotFound, Policy, ProfileError, Request, Settings

from . import _budgets, _db, _keys, _tasks
from ._apply import ApplyResult, diff_profiles, plan_apply
from ._budgets import BudgetStatus, Reservation, load_profile
from ._keys import KeyRecord
from ._policy import resolve_policy
from ._profiles import (
    Profile,
    decode_profile,
    default_profiles,
    encode_profile,
    parse_profiles_toml,
    profile_from_mapping,
    profile_to_mapping,
)
from ._tasks import TaskRecord

logger = logging.getLogger(__name__)

Notify = Callable[[AuditNotice], Awaitable[None] | None]
DB_NAME = "taskbus.db"


def _utcnow() -> datetime:
    return datetime.now(timezone.utc)


def _seed() -> list[tuple[str, tuple[object, ...]]]:
    ts = time.time()
    return [
        ("INSERT OR IGNORE INTO profiles (name, data, created_at, updated_at) VALUES (?, ?, ?, ?)",
         (p.name, encode_profile(p), ts, ts))
        for p in default_profiles().values()
    ]


class Store:
    def __init__(
        self,
        path: str | Path,
        *,
        now: Callable[[], datetime] = _utcnow,
        actor: str = "server",
        notify: Notify | None = None,
        busy_timeout_s: float = _db.BUSY_TIMEOUT_S,
    ) -> None:
        self.path = Path(path)
        self.actor = actor
        self._now = now
        self._notify = notify
        self._busy_timeout_s = busy_timeout_s
        self._db: aiosqlite.Connection | None = None
        self._lock = asyncio.Lock()

    @classmethod
    def for_settings(cls, settings: Settings, **kwargs: Any) -> Store:
        return cls(settings.data_path / DB_NAME, **kwargs)

    @classmethod
    async def open(cls, path: str | Path, **kwargs: Any) -> Store:
        store = cls(path, **kwargs)
        await store.connect()
        return store

    async def connect(self) -> None:
        if self._db is not None:
            return
        db = await _db.connect(self.path, busy_timeout_s=self._busy_timeout_s)
        try:
            before, after = await _db.migrate(db, seed=_seed())
        except BaseException:
            await asyncio.shield(db.close())
            raise
        if before != after:  # a new file is routine; an upgrade is worth a line
            log = logger.info if before else logger.debug
            log("%s: schema version %d -> %d", self.path, before, after)
        self._db = db

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    async def __aenter__(self) -> Store:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.close())

    # ------------------------------------------------------------------ plumbing

    def now(self) -> datetime:
        return self._now()

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[aiosqlite.Connection]:
        if self._db is None:
            raise RuntimeError("Store is not open: use `async with Store(path)` or `await Store.open(path)`")
        async with self._lock:
            yield self._db

    @asynccontextmanager
    async def _tx(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._read() as db:
            await db.execute("BEGIN IMMEDIATE")
            try:
                yield db
                await asyncio.shield(db.execute("COMMIT"))
            except BaseException as error:
                try:
                    await asyncio.shield(db.execute("ROLLBACK"))
                except Exception as exc:  # never hide the original error
                    logger.warning("rollback failed: %s", exc)
                if isinstance(error, sqlite3.OperationalError) and error.sqlite_errorcode == sqlite3.SQLITE_FULL:
                    logger.error("%s: the disk is full; refusing writes until space is freed", self.path)
                    raise ProfileError(
                        "the server's data disk is full: nothing was recorded and new work is refused until "
                        "an operator frees space in its data directory; retry later"
                    ) from None
                raise

    async def _emit(self, kind: str, **detail: Any) -> None:
        if self._notify is None:
            return
        notice = AuditNotice(kind=kind, actor=self.actor, ts=self.now(), detail=msgspec.to_builtins(detail))
        try:
            result = self._notify(notice)
            if inspect.isawaitable(result):
                await result
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            logger.warning("audit notifier failed for %s: %s", kind, exc)

    # ------------------------------------------------------------------ keys

    async def create_key(
        self, profile: str, *, name: str | None = None, expires_at: datetime | None = None
    ) -> tuple[str, KeyRecord]:
        """A new key for ``profile``: (plaintext, record). The plaintext exists only here."""
        now = self.now()
        if expires_at is not None and expires_at <= now:
            raise InvalidInput(f"expiry {expires_at.isoformat()} is in the past; give a future time")
        async with self._tx() as db:
            await load_profile(db, profile)
            plaintext, record = await _keys.insert_key(db, profile=profile, name=name, expires_at=expires_at, now=now)
        logger.info("key %s created for profile %s", record.prefix, profile)
        await self._emit("key_created", prefix=record.prefix, profile=profile, name=name, expires_at=expires_at)
        return plaintext, record

    async def authenticate(self, plaintext: str) -> KeyRecord:
        """The key's record, or AuthError / KeyRevoked / KeyExpired (never echoing the key)."""
        async with self._read() as db:
            return await _keys.authenticate(db, plaintext, self.now())

    async def get_key(self, prefix: str) -> KeyRecord:
        async with self._read() as db:
            return await _keys.fetch_key(db, prefix)

    async def list_keys(self, *, profile: str | None = None) -> list[KeyRecord]:
        async with self._read() as db:
            return await _keys.list_keys(db, profile=profile)

    async def revoke(self, prefix: str) -> KeyRecord:
        async with self._tx() as db:
            record, changed = await _keys.revoke(db, prefix, self.now())
        if changed:
            logger.info("key %s revoked", prefix)
            await self._emit("key_revoked", prefix=prefix, profile=record.profile)
        return record

    async def rotate(self, prefix: str, grace_s: float = 3600.0) -> tuple[str, KeyRecord]:
        """A new key replacing ``prefix``, which keeps working for ``grace_s`` seconds."""
        async with self._tx() as db:
            plaintext, new, old = await _keys.rotate(db, prefix, grace_s, self.now())
        logger.info("key %s rotated to %s (grace %ss)", prefix, new.prefix, grace_s)
        await self._emit(
            "key_rotated", prefix=prefix, new_prefix=new.prefix, profile=new.profile, grace_until=old.grace_until
        )
        return plaintext, new

    # ------------------------------------------------------------------ profiles

    async def get_profile(self, name: str) -> Profile:
        async with self._read() as db:
            return await load_profile(db, name)

    async def list_profiles(self) -> list[Profile]:
        async with self._read() as db:
            async with db.execute("SELECT data FROM profiles ORDER BY name") as cur:
                rows = await cur.fetchall()
        return [decode_profile(row["data"]) for row in rows]

    async def _write_profile(self, db: aiosqlite.Connection, profile: Profile) -> None:
        ts = self.now().timestamp()
        await db.execute(
            "INSERT INTO profiles (name, data, created_at, updated_at) VALUES (?, ?, ?, ?)"
            " ON CONFLICT(name) DO UPDATE SET data = excluded.data, updated_at = excluded.updated_at",
            (profile.name, encode_profile(profile), ts, ts),
        )

    async def create_profile(self, profile: Profile) -> Profile:
        # a Profile built in code skipped msgspec's constraint checks: run them now
        profile = profile_from_mapping(profile.name, profile_to_mapping(profile))
        async with self._tx() as db:
            try:
                await load_profile(db, profile.name)
            except NotFound:
                pass
            else:
                raise InvalidInput(
                    f"profile {profile.name!r} already exists; change it with `taskbus profiles update`"
                )
            await self._write_profile(db, profile)
        await self._emit("profile_changed", profile=profile.name, action="created", fields=profile_to_mapping(profile))
        return profile

    async def update_profile(self, name: str, **changes: Any) -> Profile:
        """Change some fields; the result is validated as a whole before anything is written."""
        async with self._tx() as db:
            new, diff = await self._change_profile(db, name, changes)
        if diff:
            await self._emit("profile_changed", profile=name, action="updated", changes=diff)
        return new

    async def _change_profile(
        self, db: aiosqlite.Connection, name: str, changes: dict[str, Any]
    ) -> tuple[Profile, dict[str, tuple[Any, Any]]]:
        old = await load_profile(db, name)
        new = profile_from_mapping(name, {**profile_to_mapping(old), **changes})
        diff = diff_profiles(old, new)
        if diff:
            await self._write_profile(db, new)
        return new, diff

    async def delete_profile(self, name: str) -> None:
        """Refused while keys that still work use the profile."""
        now = self.now()
        async with self._tx() as db:
            await load_profile(db, name)
            users = [k.prefix for k in await _keys.list_keys(db, profile=name) if k.state(now) in ("active", "rotated")]
            if users:
                raise InvalidInput(
                    f"profile {name!r} is used by {len(users)} active key(s) ({', '.join(users)}); "
                    "revoke them first (`taskbus keys revoke PREFIX`)"
                )
            await db.execute("DELETE FROM profiles WHERE name = ?", (name,))
        await self._emit("profile_deleted", profile=name)

    async def apply_toml(self, text: str) -> ApplyResult:
        """Create/update the profiles of a TOML file, all or nothing; idempotent."""
        incoming = parse_profiles_toml(text)
        async with self._tx() as db:
            existing: dict[str, Profile] = {}
            for name in incoming:
                try:
                    existing[name] = await load_profile(db, name)
                except NotFound:
                    pass
            result, writes = plan_apply(existing, incoming)
            for profile in writes:
                await self._write_profile(db, profile)
        for name in result.created:
            await self._emit("profile_changed", profile=name, action="created", source="apply")
        for name in result.updated:
            await self._emit(
                "profile_changed", profile=name, action="updated", source="apply",
                changes=diff_profiles(existing[name], incoming[name]),
            )
        return result

    # ------------------------------------------------------------------ policy

    async def resolve(
        self, key: KeyRecord, request: Request, *, task_id: str, model: str, settings: Settings, **kwargs: Any
    ) -> Policy:
        """``resolve_policy`` with the key's current profile loaded."""
        profile = await self.get_profile(key.profile)
        return resolve_policy(
            profile, request, task_id=task_id, key_id=key.prefix, model=model, settings=settings, **kwargs
        )

    # ------------------------------------------------------------------ budgets

    async def reserve(self, key_id: str, task_id: str, amount: float) -> Reservation:
        """Reserve ``amount`` USD; BudgetExceeded / ConcurrencyLimit when it does not fit."""
        async with self._tx() as db:
            reservation, _ = await _budgets.reserve(db, key_id, task_id, amount, self.now())
        return reservation

    async def settle(self, task_id: str, actual: float) -> Reservation:
        async with self._tx() as db:
            reservation, _ = await _budgets.settle(db, task_id, actual, self.now())
        return reservation

    async def release(self, task_id: str) -> Reservation | None:
        async with self._tx() as db:
            reservation, _ = await _budgets.release(db, task_id, self.now())
        return reservation

    async def get_reservation(self, task_id: str) -> Reservation | None:
        async with self._read() as db:
            return await _budgets.get_reservation(db, task_id)

    async def remaining_budget(self, key_id: str) -> BudgetStatus:
        async with self._read() as db:
            return await _budgets.status(db, key_id, self.now())

    async def sweep_stale(self, older_than_s: float) -> list[str]:
        async with self._tx() as db:
            released = await _budgets.sweep_stale(db, older_than_s, self.now())
        if released:
            logger.info("released %d stale reservation(s)", len(released))
        return released

    async def check_rate(self, key_id: str) -> int:
        """Count one request for ``key_id``; RateLimited when over the profile's per-minute limit."""
        async with self._tx() as db:
            return await _budgets.check_rate(db, key_id, self.now())

    async def set_budget(
        self,
        *,
        profile: str | None = None,
        key_id: str | None = None,
        day_usd: float | None = None,
        month_usd: float | None = None,
    ) -> None:
        """Set the profile's budgets or a per-key (account) override; None leaves a window as is."""
        if (profile is None) == (key_id is None):
            raise InvalidInput("give exactly one of a profile or a key")
        for label, value in (("daily", day_usd), ("monthly", month_usd)):
            if value is not None and (not math.isfinite(value) or value < 0):
                raise InvalidInput(f"{label} budget must be zero or more USD (got {value})")
        if day_usd is None and month_usd is None:
            raise InvalidInput("nothing to set: give a daily and/or a monthly budget")
        if profile is not None:
            changes = {k: v for k, v in (("budget_day_usd", day_usd), ("budget_month_usd", month_usd)) if v is not None}
            async with self._tx() as db:
                await self._change_profile(db, profile, changes)
            target = {"profile": profile}
        else:
            async with self._tx() as db:
                account = await _budgets.set_key_budget(db, key_id, day_usd, month_usd, self.now())  # type: ignore[arg-type]
            target = {"key": key_id, "account": account}
        await self._emit("budget_changed", **target, day_usd=day_usd, month_usd=month_usd)

    # ------------------------------------------------------------------ the server's hot path
    # One transaction each instead of several: a request is admitted with three commits.

    async def begin_request(self, key_id: str, profile: str) -> tuple[Profile, BudgetStatus]:
        """Count the request against the rate limit (RateLimited) and read what routing needs."""
        async with self._tx() as db:
            now = self.now()
            await _budgets.check_rate(db, key_id, now)
            return await load_profile(db, profile), await _budgets.status(db, key_id, now)

    async def admit(self, key_id: str, task_id: str, amount: float, *, profile: str, kind: str, **task: Any) -> Reservation:
        """Reserve ``amount`` (BudgetExceeded / ConcurrencyLimit) and record the task, atomically."""
        async with self._tx() as db:
            now = self.now()
            reservation, _ = await _budgets.reserve(db, key_id, task_id, amount, now)
            await _tasks.record_task(db, task_id=task_id, key_id=key_id, profile=profile, kind=kind,
                                     reserved=amount, now=now, **task)
        return reservation

    async def finish_task(self, task_id: str, actual: float, status: str, **task: Any) -> TaskRecord:
        """Settle the reservation with the metered cost and record the outcome, atomically."""
        async with self._tx() as db:
            now = self.now()
            await _budgets.settle(db, task_id, actual, now)
            record, _ = await _tasks.update_task(db, task_id, status=status, cost=actual, now=now, **task)
        return record

    # ------------------------------------------------------------------ tasks

    async def record_task(
        self, task_id: str, key_id: str, profile: str, kind: str, reserved: float, **kwargs: Any
    ) -> TaskRecord:
        async with self._tx() as db:
            record, _ = await _tasks.record_task(
                db, task_id=task_id, key_id=key_id, profile=profile, kind=kind, reserved=reserved,
                now=self.now(), **kwargs,
            )
        return record

    async def update_task(self, task_id: str, status: str, **kwargs: Any) -> TaskRecord:
        async with self._tx() as db:
            record, _ = await _tasks.update_task(db, task_id, status=status, now=self.now(), **kwargs)
        return record

    async def get_task(self, task_id: str) -> TaskRecord:
        async with self._read() as db:
            return await _tasks.get_task(db, task_id)

    async def list_tasks(
        self, key_id: str | None = None, *, status: str | None = None, limit: int = 50
    ) -> list[TaskRecord]:
        async with self._read() as db:
            return await _tasks.list_tasks(db, key_id, status=status, limit=limit)
