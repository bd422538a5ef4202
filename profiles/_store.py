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
import math
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

from . import _ledger
from ._apply import ApplyResult, diff_profiles, plan_apply
from ._budgets import BudgetStatus, Reservation, to_micro, to_usd
from ._import import SEEDED
from ._keys import KeyRecord, check_shape, check_usable, display_prefix, hash_key, lookup, new_key
from ._kv import CasEntries, Doc, SafeKeys, dumps, read, scan
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
from ._tasks import LIVE_STATUSES, TaskRecord
from ._view import BUDGET, KEY, PROFILE, ControlView, StoredKey, encode_key

logger = logging.getLogger(__name__)

Notify = Callable[[AuditNotice], Awaitable[None] | None]
DB_NAME = "taskbus.db"
"""The SQLite file of taskbus before 0.6 (imported once by ``taskbus migrate``)."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
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
                name: SafeKeys(kv) for name, kv in (await ensure_control_plane(self._bus.js, subjects, replicas=self._bus.replicas)).items()
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

    # ------------------------------------------------------------------ budgets

    async def _status(self, key_id: str, doc: Doc | None) -> BudgetStatus:
        key = await self.get_key(key_id)
        profile = await self.get_profile(key.profile)
        override = self.view.budgets.get(key.account)
        day, month = profile.budget_day_usd, profile.budget_month_usd
        if override is not None:
            day = override["day_usd"] if override.get("day_usd") is not None else day
            month = override["month_usd"] if override.get("month_usd") is not None else month
        return _ledger.budget_status(
            doc,
            key_id=key_id,
            account=key.account,
            profile=profile.name,
            max_concurrent=profile.max_concurrent,
            day_limit=day,
            month_limit=month,
            override=override is not None,
            now=self.now(),
        )

    async def remaining_budget(self, key_id: str) -> BudgetStatus:
        key = await self.get_key(key_id)
        doc, _ = await read(self.ledger.kv, _ledger.account_key(key.account))
        return await self._status(key_id, doc)

    async def reserve(self, key_id: str, task_id: str, amount: float) -> Reservation:
        """Reserve ``amount`` USD (one compare-and-set on the account's entry);
        BudgetExceeded / ConcurrencyLimit when it does not fit. Same task id twice: no-op."""
        record, added = await self._reserve(key_id, task_id, amount)
        return await self._record_reservation(record, added)

    async def _reserve(self, key_id: str, task_id: str, amount: float) -> tuple[Doc, bool]:
        """The compare-and-set half of ``reserve``: (the reservation's record, whether it is new)."""
        _ledger.check_amount(amount, "reservation amount")
        now = self.now()
        state = await self._status(key_id, None)
        record: Doc = {
            "task_id": task_id,
            "key_id": key_id,
            "account": state.account,
            "amount": to_micro(amount),
            "actual": None,
            "state": "reserved",
            "day": state.day.period,
            "month": state.month.period,
            "created": now.timestamp(),
        }

        def change(doc: Doc | None) -> tuple[Doc | None, bool]:
            new = _ledger.reserve(doc, state, task_id, amount, now)
            return new, new is not None

        return record, await self.ledger.change(_ledger.account_key(state.account), change)

    async def _record_reservation(self, record: Doc, added: bool) -> Reservation:
        """The second half: the per-task reservation record (what settle and release find)."""
        task_id = record["task_id"]
        try:
            revision = await self.ledger.kv.create(_ledger.reservation_key(task_id), dumps(record))
            self.ledger.remember(_ledger.reservation_key(task_id), record, revision)
        except KeyWrongLastSequenceError:  # this task id was reserved before: answer with that
            existing, _ = await read(self.ledger.kv, _ledger.reservation_key(task_id))
            if added:  # ... and it was closed since: undo ours
                now = self.now()
                await self.ledger.change(
                    _ledger.account_key(record["account"]), lambda doc: (_ledger.close(doc, task_id, record, None, now), None)
                )
            assert existing is not None
            return self._existing(existing, record["key_id"], task_id)
        return _reservation(record)

    @staticmethod
    def _existing(existing: Doc, key_id: str, task_id: str) -> Reservation:
        if existing["key_id"] != key_id:
            raise InvalidInput(f"task {task_id} already has a reservation under another key")
        return _reservation(existing)

    async def _close(self, task_id: str, actual: float | None) -> tuple[Reservation | None, bool]:
        key = _ledger.reservation_key(task_id)
        record = self.ledger.cached(key)  # what this server reserved: no read (a stale copy fails the CAS below)
        if record is None:
            record, _ = await read(self.ledger.kv, key)
        if record is None:
            if actual is None:
                return None, False
            raise NotFound(f"task {task_id} has no reservation to settle", task_id=task_id)
        if record["state"] == "settled" or (actual is None and record["state"] != "reserved"):
            return _reservation(record), False
        now = self.now()
        micro = None if actual is None else to_micro(actual)
        await self.ledger.change(
            _ledger.account_key(record["account"]), lambda doc: (_ledger.close(doc, task_id, record, micro, now), None)
        )

        def mark(doc: Doc | None) -> tuple[Doc | None, Doc]:
            new = {**(doc or record), "state": "released" if actual is None else "settled", "actual": 0 if micro is None else micro}
            return new, new

        closed = _reservation(await self.ledger.change(key, mark))
        self.ledger.forget(key)
        return closed, True

    async def settle(self, task_id: str, actual: float) -> Reservation:
        """Replace the reservation with the metered cost; settling twice keeps the first figure.
        A reservation released by the stale sweep is still settled: the money was spent."""
        _ledger.check_amount(actual, "actual cost")
        reservation, _ = await self._close(task_id, actual)
        assert reservation is not None
        return reservation

    async def release(self, task_id: str) -> Reservation | None:
        """Drop an open reservation (the task never ran). Unknown or closed: no-op."""
        reservation, _ = await self._close(task_id, None)
        return reservation

    async def abandon(self, task_id: str, key_id: str, *, profile: str, kind: str, error_code: str, summary: str) -> TaskRecord:
        """Undo an admission that failed half-way (NATS stopped answering between its writes):
        release the reservation wherever it got to (the account's entry may hold it without
        its record: the compare-and-set landed but its answer was lost) and record the task
        ``failed`` with ``error_code``. Every step is safe to repeat."""
        reservation, _ = await self._close(task_id, None)
        if reservation is None:
            account = (await self._status(key_id, None)).account
            now = self.now()

            def drop(doc: Doc | None) -> tuple[Doc | None, None]:
                opened = (doc or {}).get("open", {}).get(task_id)
                if opened is None:
                    return None, None
                record = {"amount": opened[1], "day": opened[2], "month": opened[3]}
                return _ledger.close(doc, task_id, record, None, now), None

            await self.ledger.change(_ledger.account_key(account), drop, fresh=True)
        await self.registry.record(task_id=task_id, key_id=key_id, profile=profile, kind=kind, reserved=0.0, now=self.now())
        record, _ = await self.registry.update(
            task_id, status="failed", cost=0.0, error_code=error_code, result_summary=summary, now=self.now()
        )
        return record

    async def get_reservation(self, task_id: str) -> Reservation | None:
        record, _ = await read(self.ledger.kv, _ledger.reservation_key(task_id))
        return None if record is None else _reservation(record)

    async def open_reservations(self, older_than_s: float) -> list[tuple[str, str]]:
        """(task id, key prefix) of every reservation still open after ``older_than_s``
        (reads one entry per account)."""
        cutoff = self.now().timestamp() - older_than_s
        found: list[tuple[str, str]] = []
        for _, value in await scan(self.ledger.kv, "a.>"):
            opened = msgspec.json.decode(value).get("open", {})
            found += [(task_id, opened[task_id][0]) for task_id in sorted(_ledger.stale({"open": opened}, cutoff))]
        return found

    async def sweep_stale(self, older_than_s: float) -> list[str]:
        """Release reservations still open after ``older_than_s`` (reads one entry per
        account); their tasks, if still live, become ``failed`` (``stale_reservation``)."""
        if older_than_s < 0:
            raise InvalidInput(f"older_than_s must not be negative (got {older_than_s})")
        cutoff = self.now().timestamp() - older_than_s
        released: list[str] = []
        for _, value in await scan(self.ledger.kv, "a.>"):
            for task_id in sorted(_ledger.stale(msgspec.json.decode(value), cutoff)):
                _, changed = await self._close(task_id, None)
                if not changed:
                    continue
                released.append(task_id)
                try:
                    task = await self.registry.get(task_id)
                except NotFound:
                    continue
                if task.status in LIVE_STATUSES:
                    await self.registry.update(task_id, status="failed", error_code="stale_reservation", now=self.now())
        if released:
            logger.info("released %d stale reservation(s)", len(released))
        return released

    async def check_rate(self, key_id: str) -> int:
        """Count one request for ``key_id``; RateLimited when over the profile's per-minute limit."""
        key = await self.get_key(key_id)
        limit = (await self.get_profile(key.profile)).rate_limit_per_min
        now = self.now()
        remaining: int = await self.ledger.change(
            _ledger.rate_key(key_id), lambda doc: _ledger.count_request(doc, key_id=key_id, profile=key.profile, limit=limit, now=now)
        )
        return remaining

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
        target: dict[str, Any]
        if profile is not None:
            changes = {k: v for k, v in (("budget_day_usd", day_usd), ("budget_month_usd", month_usd)) if v is not None}
            await self._change_profile(profile, changes)
            target = {"profile": profile}
        else:
            assert key_id is not None
            account = (await self.get_key(key_id)).account
            now = self.now().timestamp()

            def change(doc: Doc | None) -> tuple[Doc, None]:
                doc = dict(doc or {})
                for field, value in (("day_usd", day_usd), ("month_usd", month_usd)):
                    if value is not None:
                        doc[field] = value
                doc["updated_at"] = now
                return doc, None

            await self._change_control(BUDGET + account, change)
            target = {"key": key_id, "account": account}
        await self._emit("budget_changed", **target, day_usd=day_usd, month_usd=month_usd)

    # ------------------------------------------------------------------ the server's hot path

    async def begin_request(self, key_id: str, profile: str) -> tuple[Profile, BudgetStatus]:
        """Count the request against the rate limit (RateLimited) and read what routing needs.

        One round trip: the rate window's compare-and-set, the account's budget entry and
        the key's stored record (so a key revoked through another server a moment ago is
        refused here even if this server's view has not seen the revoke yet) at once."""
        key = await self.get_key(key_id)
        _, (doc, _), (stored, _) = await asyncio.gather(
            self.check_rate(key_id),
            read(self.ledger.kv, _ledger.account_key(key.account)),
            read(self.control.kv, KEY + key_id),
        )
        if stored is None:
            raise NotFound(f"no key with prefix {key_id!r}", prefix=key_id)
        check_usable(msgspec.convert(stored, StoredKey).record, self.now())
        return await self.get_profile(profile), await self._status(key_id, doc)

    async def admit(self, key_id: str, task_id: str, amount: float, *, profile: str, kind: str, **task: Any) -> Reservation:
        """Reserve ``amount`` (BudgetExceeded / ConcurrencyLimit) and record the task: the
        compare-and-set, then the reservation's and the task's records at once."""
        record, added = await self._reserve(key_id, task_id, amount)
        try:
            reservation, _ = await asyncio.gather(
                self._record_reservation(record, added),
                self.registry.record(task_id=task_id, key_id=key_id, profile=profile, kind=kind, reserved=amount, now=self.now(), **task),
            )
        except BaseException:
            await asyncio.shield(self.release(task_id))
            raise
        return reservation

    async def finish_task(self, task_id: str, actual: float, status: str, **task: Any) -> TaskRecord:
        """Settle the reservation with the metered cost and record the outcome."""
        _ledger.check_amount(actual, "actual cost")
        _, (record, _) = await asyncio.gather(
            self._close(task_id, actual),
            self.registry.update(task_id, status=status, cost=actual, now=self.now(), **task),
        )
        return record

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


def _reservation(doc: Doc) -> Reservation:
    return Reservation(
        task_id=doc["task_id"],
        key_id=doc["key_id"],
        amount_usd=to_usd(doc["amount"]),
        actual_usd=None if doc["actual"] is None else to_usd(doc["actual"]),
        state=doc["state"],
        day=doc["day"],
        created_at=datetime.fromtimestamp(doc["created"], UTC),
    )
