"""``Store``: keys, profiles, budgets, rate limits and the task registry in JetStream KV.

    async with Store.for_settings(settings) as store:          # its own NATS connection
        plaintext, key = await store.create_key("developer")
    async with Store(bus) as store: ...                          # the server's connection

Three buckets (names in ``bus.Subjects``): the control bucket (key hashes, profiles,
budget overrides) which every Store watches into memory (``ControlView``), so
authentication and policy resolution touch no disk and no network; the ledger (one
budget entry per account, one rate window per key, one record per reservation), written
only by compare-and-set; the task registry. Any number of Stores (servers, CLI runs) on
one NATS share one truth. The first Store on an empty control bucket seeds the shipped
default profiles (once: an operator's later deletion stands).

Changes to keys, profiles and budgets are handed, once stored, to the optional ``notify``
callable as ``bus.AuditNotice``s; a failing notifier is logged, never raised.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from nats.js.errors import KeyWrongLastSequenceError

from bus import (
    AuditNotice,
    AuthError,
    Bus,
    BusError,
    InvalidInput,
    NotFound,
    Policy,
    Request,
    Settings,
    TaskbusError,
    ensure_control_plane,
)

from ._apply import ApplyResult, diff_profiles, plan_apply
from ._import import SEEDED
from ._keys import KeyRecord, check_shape, display_prefix, hash_key, lookup, new_key
from ._kv import CasEntries, Doc, SafeKeys, dumps, read
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
from ._registry import Registry
from ._store_budgets import BudgetMethods
from ._tasks import TaskRecord
from ._view import KEY, PROFILE, ControlView, StoredKey, encode_key

logger = logging.getLogger(__name__)

Notify = Callable[[AuditNotice], Awaitable[None] | None]
DB_NAME = "taskbus.db"
"""The SQLite file of taskbus before 0.6 (imported once by ``taskbus migrate``)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Store(BudgetMethods):
    def __init__(
        self,
        bus: Bus | None = None,
        *,
        settings: Settings | None = None,
        now: Callable[[], datetime] = _utcnow,
        actor: str = "server",
        notify: Notify | None = None,
    ) -> None:
        if bus is None and settings is None:
            raise ValueError("Store needs a Bus or the Settings to connect with")
        self.actor = actor
        self._bus = bus
        self._settings = settings
        self._owns_bus = bus is None
        self._now = now
        self._notify = notify
        self._view: ControlView | None = None
        self._control: CasEntries | None = None
        self._ledger: CasEntries | None = None
        self._registry: Registry | None = None

    @classmethod
    def for_settings(cls, settings: Settings, *, bus: Bus | None = None, **kwargs: Any) -> Store:
        """A Store on ``bus``, or on its own connection as the user of ``settings``."""
        return cls(bus, settings=settings, **kwargs)

    async def connect(self) -> None:
        if self._view is not None:
            return
        if self._bus is None:
            assert self._settings is not None
            self._bus = await Bus.for_settings(self._settings, name=f"taskbus-store-{self.actor}")
        try:
            subjects = self._bus.subjects
            buckets = {
                name: SafeKeys(kv, patience_s=self._bus.publish_patience_s)
                for name, kv in (await ensure_control_plane(self._bus.js, subjects, replicas=self._bus.replicas)).items()
            }
            control = buckets[subjects.control_bucket]
            self._control = CasEntries(control)
            self._ledger = CasEntries(buckets[subjects.ledger_bucket])
            self._registry = Registry(buckets[subjects.tasks_bucket])
            view = ControlView(control, reconnects=lambda: self._bus.reconnects if self._bus is not None else 0)
            await view.start()
            self._view = view
            await self._seed()
        except BaseException:
            await asyncio.shield(self.close())
            raise

    async def close(self) -> None:
        view, self._view = self._view, None
        if view is not None:
            await view.stop()
        if self._owns_bus and self._bus is not None:
            bus, self._bus = self._bus, None
            await bus.close()

    async def __aenter__(self) -> Store:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.close())

    # ------------------------------------------------------------------ plumbing

    def now(self) -> datetime:
        return self._now()

    @property
    def bus(self) -> Bus:
        if self._bus is None:
            raise RuntimeError("Store is not open: use `async with Store(...)`")
        return self._bus

    @property
    def view(self) -> ControlView:
        if self._view is None:
            raise RuntimeError("Store is not open: use `async with Store(...)`")
        return self._view

    @property
    def registry(self) -> Registry:
        if self._registry is None:
            raise RuntimeError("Store is not open: use `async with Store(...)`")
        return self._registry

    def _kv(self, which: CasEntries | None) -> CasEntries:
        if which is None:
            raise RuntimeError("Store is not open: use `async with Store(...)`")
        return which

    @property
    def control(self) -> CasEntries:
        return self._kv(self._control)

    @property
    def ledger(self) -> CasEntries:
        return self._kv(self._ledger)

    async def is_empty(self) -> bool:
        """True when no Store has ever seeded this control plane (nothing imported either)."""
        doc, _ = await read(self.control.kv, SEEDED)
        return doc is None

    async def _seed(self) -> None:
        """The shipped default profiles, once per control plane."""
        if self.view.profiles or not await self.is_empty():
            return
        try:
            await self.control.kv.create(SEEDED, dumps({"at": self.now().timestamp(), "by": self.actor}))
        except KeyWrongLastSequenceError:
            return  # another Store seeds
        for profile in default_profiles().values():
            try:
                await self._write_profile(profile, create=True)
            except InvalidInput:
                pass

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

    async def _seen(self, revision: int) -> None:
        await self.view.caught_up(revision)

    async def _change_control(self, key: str, change: Callable[[Doc | None], tuple[Doc | None, Any]]) -> Any:
        result = await self.control.change(key, change, fresh=True)
        await self._seen(self.control.revision(key))
        return result

    # ------------------------------------------------------------------ keys

    async def create_key(self, profile: str, *, name: str | None = None, expires_at: datetime | None = None) -> tuple[str, KeyRecord]:
        """A new key for ``profile``: (plaintext, record). The plaintext exists only here."""
        now = self.now()
        if expires_at is not None and expires_at <= now:
            raise InvalidInput(f"expiry {expires_at.isoformat()} is in the past; give a future time")
        await self.get_profile(profile)
        plaintext, record = await self._insert_key(profile=profile, name=name, expires_at=expires_at, now=now)
        logger.info("key %s created for profile %s", record.prefix, profile)
        await self._emit("key_created", prefix=record.prefix, profile=profile, name=name, expires_at=expires_at)
        return plaintext, record

    async def _insert_key(
        self,
        *,
        profile: str,
        name: str | None,
        expires_at: datetime | None,
        now: datetime,
        account: str | None = None,
    ) -> tuple[str, KeyRecord]:
        for _ in range(5):  # a display-prefix collision is ~2^-48; retry rather than fail
            plaintext = new_key()
            prefix = display_prefix(plaintext)
            record = KeyRecord(prefix=prefix, profile=profile, name=name, created_at=now, expires_at=expires_at, account=account or prefix)
            try:
                revision = await self.control.kv.create(KEY + prefix, encode_key(record, hash_key(plaintext)))
            except KeyWrongLastSequenceError:
                continue
            await self._seen(revision)
            return plaintext, record
        raise RuntimeError("could not generate a unique key prefix")  # pragma: no cover

    async def authenticate(self, plaintext: str) -> KeyRecord:
        """The key's record, or AuthError / KeyRevoked / KeyExpired (never echoing the key).
        Reads the in-memory view; only a key the view does not know yet (created through
        another server a moment ago) costs one read of its entry."""
        try:
            return lookup(self.view.by_hash, plaintext, self.now())
        except AuthError:
            check_shape(plaintext)
            if await self.view.fetch_key(display_prefix(plaintext)) is None:
                raise
            return lookup(self.view.by_hash, plaintext, self.now())

    async def get_key(self, prefix: str) -> KeyRecord:
        stored = self.view.keys.get(prefix) or await self.view.fetch_key(prefix)
        if stored is None:
            raise NotFound(f"no key with prefix {prefix!r}; `taskbus keys list` shows them", prefix=prefix)
        return stored.record

    async def list_keys(self, *, profile: str | None = None) -> list[KeyRecord]:
        records = [s.record for s in self.view.keys.values() if profile is None or s.record.profile == profile]
        return sorted(records, key=lambda r: (r.created_at, r.prefix))

    async def _change_key(self, prefix: str, edit: Callable[[KeyRecord], KeyRecord | None]) -> tuple[KeyRecord, bool]:
        def change(doc: Doc | None) -> tuple[Doc | None, tuple[KeyRecord, bool]]:
            if doc is None:
                raise NotFound(f"no key with prefix {prefix!r}; `taskbus keys list` shows them", prefix=prefix)
            stored = msgspec.convert(doc, StoredKey)
            new = edit(stored.record)
            if new is None:
                return None, (stored.record, False)
            return msgspec.to_builtins(StoredKey(record=new, hash=stored.hash)), (new, True)

        result: tuple[KeyRecord, bool] = await self._change_control(KEY + prefix, change)
        return result

    async def revoke(self, prefix: str) -> KeyRecord:
        now = self.now()
        record, changed = await self._change_key(
            prefix, lambda r: None if r.revoked_at is not None else msgspec.structs.replace(r, revoked_at=now)
        )
        if changed:
            logger.info("key %s revoked", prefix)
            await self._emit("key_revoked", prefix=prefix, profile=record.profile)
        return record

    async def rotate(self, prefix: str, grace_s: float = 3600.0) -> tuple[str, KeyRecord]:
        """A new key replacing ``prefix``, which keeps working for ``grace_s`` seconds."""
        if grace_s < 0:
            raise InvalidInput(f"grace period must not be negative (got {grace_s}s)")
        now = self.now()
        old = await self.get_key(prefix)
        self._check_rotatable(old)
        expires_at = None if old.expires_at is None else now + (old.expires_at - old.created_at)
        plaintext, new = await self._insert_key(profile=old.profile, name=old.name, expires_at=expires_at, now=now, account=old.account)
        grace_until = now + timedelta(seconds=grace_s)

        def edit(record: KeyRecord) -> KeyRecord:
            self._check_rotatable(record)
            return msgspec.structs.replace(record, replaced_by=new.prefix, grace_until=grace_until)

        try:
            await self._change_key(prefix, edit)
        except BaseException:  # rotated or revoked meanwhile: the new key must not outlive that
            await asyncio.shield(self.control.kv.delete(KEY + new.prefix))
            raise
        logger.info("key %s rotated to %s (grace %ss)", prefix, new.prefix, grace_s)
        await self._emit("key_rotated", prefix=prefix, new_prefix=new.prefix, profile=new.profile, grace_until=grace_until)
        return plaintext, new

    @staticmethod
    def _check_rotatable(record: KeyRecord) -> None:
        if record.revoked_at is not None:
            raise InvalidInput(f"key {record.prefix} is revoked; create a new key instead of rotating it")
        if record.replaced_by is not None:
            raise InvalidInput(f"key {record.prefix} was already rotated to {record.replaced_by}; rotate that one")

    # ------------------------------------------------------------------ profiles

    async def get_profile(self, name: str) -> Profile:
        profile = self.view.profiles.get(name)
        if profile is None:
            raise NotFound(f"no profile named {name!r}; `taskbus profiles list` shows them", profile=name)
        return profile

    async def list_profiles(self) -> list[Profile]:
        return [self.view.profiles[n] for n in sorted(self.view.profiles)]

    async def _write_profile(self, profile: Profile, *, create: bool = False) -> None:
        value = encode_profile(profile).encode()
        key = PROFILE + profile.name
        if create:
            try:
                revision = await self.control.kv.create(key, value)
            except KeyWrongLastSequenceError:
                raise InvalidInput(f"profile {profile.name!r} already exists; change it with `taskbus profiles update`") from None
        else:
            revision = await self.control.kv.put(key, value)
        await self._seen(revision)

    async def create_profile(self, profile: Profile) -> Profile:
        # a Profile built in code skipped msgspec's constraint checks: run them now
        profile = profile_from_mapping(profile.name, profile_to_mapping(profile))
        await self._write_profile(profile, create=True)
        await self._emit("profile_changed", profile=profile.name, action="created", fields=profile_to_mapping(profile))
        return profile

    async def update_profile(self, name: str, **changes: Any) -> Profile:
        """Change some fields; the result is validated as a whole before anything is written."""
        new, diff = await self._change_profile(name, changes)
        if diff:
            await self._emit("profile_changed", profile=name, action="updated", changes=diff)
        return new

    async def _change_profile(self, name: str, changes: dict[str, Any]) -> tuple[Profile, dict[str, tuple[Any, Any]]]:
        def change(doc: Doc | None) -> tuple[Doc | None, tuple[Profile, dict[str, tuple[Any, Any]]]]:
            if doc is None:
                raise NotFound(f"no profile named {name!r}; `taskbus profiles list` shows them", profile=name)
            old = decode_profile(dumps(doc))
            new = profile_from_mapping(name, {**profile_to_mapping(old), **changes})
            diff = diff_profiles(old, new)
            return (msgspec.json.decode(encode_profile(new)) if diff else None), (new, diff)

        result: tuple[Profile, dict[str, tuple[Any, Any]]] = await self._change_control(PROFILE + name, change)
        return result

    async def delete_profile(self, name: str) -> None:
        """Refused while keys that still work use the profile."""
        now = self.now()
        await self.get_profile(name)
        users = [k.prefix for k in await self.list_keys(profile=name) if k.state(now) in ("active", "rotated")]
        if users:
            raise InvalidInput(
                f"profile {name!r} is used by {len(users)} active key(s) ({', '.join(users)}); "
                "revoke them first (`taskbus keys revoke PREFIX`)"
            )
        await self.control.kv.delete(PROFILE + name)
        await self.view.wait_for(lambda: name not in self.view.profiles, f"profile {name!r} deleted")
        await self._emit("profile_deleted", profile=name)

    async def apply_toml(self, text: str) -> ApplyResult:
        """Create/update the profiles of a TOML file; idempotent. Everything is validated
        before the first write; the writes are one per profile."""
        incoming = parse_profiles_toml(text)
        existing = {name: self.view.profiles[name] for name in incoming if name in self.view.profiles}
        result, writes = plan_apply(existing, incoming)
        for done, profile in enumerate(writes):
            try:
                await self._write_profile(profile)
            except TaskbusError:
                raise
            except Exception as exc:  # NATS failed half-way: say what is applied and how to finish
                written = ", ".join(p.name for p in writes[:done]) or "none"
                raise BusError(
                    f"applying the profiles stopped at {profile.name!r} ({type(exc).__name__}: {exc}); "
                    f"{done} of {len(writes)} written ({written}); apply the file again to finish"
                ) from None
        for name in result.created:
            await self._emit("profile_changed", profile=name, action="created", source="apply")
        for name in result.updated:
            await self._emit(
                "profile_changed",
                profile=name,
                action="updated",
                source="apply",
                changes=diff_profiles(existing[name], incoming[name]),
            )
        return result

    # ------------------------------------------------------------------ policy

    async def resolve(self, key: KeyRecord, request: Request, *, task_id: str, model: str, settings: Settings, **kwargs: Any) -> Policy:
        """``resolve_policy`` with the key's current profile loaded."""
        profile = await self.get_profile(key.profile)
        return resolve_policy(profile, request, task_id=task_id, key_id=key.prefix, model=model, settings=settings, **kwargs)

    # ------------------------------------------------------------------ tasks

    async def record_task(self, task_id: str, key_id: str, profile: str, kind: str, reserved: float, **kwargs: Any) -> TaskRecord:
        record, _ = await self.registry.record(
            task_id=task_id, key_id=key_id, profile=profile, kind=kind, reserved=reserved, now=self.now(), **kwargs
        )
        return record

    async def update_task(self, task_id: str, status: str, **kwargs: Any) -> TaskRecord:
        record, _ = await self.registry.update(task_id, status=status, now=self.now(), **kwargs)
        return record

    async def get_task(self, task_id: str) -> TaskRecord:
        return await self.registry.get(task_id)

    async def list_tasks(self, key_id: str | None = None, *, status: str | None = None, limit: int = 50) -> list[TaskRecord]:
        return await self.registry.list(key_id, status=status, limit=limit)
