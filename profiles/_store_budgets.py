"""The ledger half of ``Store``: budget windows and reservations (one compare-and-set on
the account's entry, then the reservation's own record), settlement and release, the
sweeps of reservations left open, per-key rate windows, budget overrides, and the
server's hot path that combines them with the task registry (``begin_request``,
``admit``, ``finish_task``). A mixin: ``Store`` provides the buckets, the view and the
key and profile lookups named under ``TYPE_CHECKING`` below.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Callable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import msgspec
from nats.js.errors import KeyWrongLastSequenceError

from bus import InvalidInput, NotFound

from . import _ledger
from ._budgets import BudgetStatus, Reservation, to_micro, to_usd
from ._keys import KeyRecord, check_usable
from ._kv import CasEntries, Doc, dumps, read, scan
from ._profiles import Profile
from ._registry import Registry
from ._tasks import LIVE_STATUSES, TaskRecord
from ._view import BUDGET, KEY, ControlView, StoredKey

logger = logging.getLogger(__name__)


class BudgetMethods:
    """Budgets, reservations, rate windows and the hot path (mixed into ``Store``)."""

    if TYPE_CHECKING:

        @property
        def ledger(self) -> CasEntries: ...

        @property
        def control(self) -> CasEntries: ...

        @property
        def registry(self) -> Registry: ...

        @property
        def view(self) -> ControlView: ...

        def now(self) -> datetime: ...

        async def get_key(self, prefix: str) -> KeyRecord: ...

        async def get_profile(self, name: str) -> Profile: ...

        async def _emit(self, kind: str, **detail: Any) -> None: ...

        async def _change_control(self, key: str, change: Callable[[Doc | None], tuple[Doc | None, Any]]) -> Any: ...

        async def _change_profile(self, name: str, changes: dict[str, Any]) -> tuple[Profile, dict[str, tuple[Any, Any]]]: ...

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
