"""Budgets: reservations and settlements in one ledger, windows per UTC day and month,
the per-key concurrency limit and the per-key rate limit.

Every function here runs inside the caller's ``BEGIN IMMEDIATE`` transaction (the Store
owns transactions), so a check and the write that depends on it are one atomic step
even across processes. Amounts are kept as integer micro-USD so sums are exact.

A ledger row belongs to the UTC day and month of its reservation. The window's use is
``reserved amounts + settled actual costs``; released rows count nothing. Budgets are
counted per *account* (all keys of one rotation chain); concurrency and rate per key.
"""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

import aiosqlite
import msgspec

from bus import BudgetExceeded, ConcurrencyLimit, InvalidInput, NotFound, RateLimited

from ._keys import fetch_key
from ._profiles import Profile, decode_profile

MICRO = 1_000_000
RATE_WINDOW_S = 60.0


def to_micro(usd: float) -> int:
    return int(round(usd * MICRO))


def to_usd(micro: int | None) -> float:
    return 0.0 if micro is None else micro / MICRO


def day_of(now: datetime) -> str:
    return now.astimezone(timezone.utc).strftime("%Y-%m-%d")


def month_of(now: datetime) -> str:
    return now.astimezone(timezone.utc).strftime("%Y-%m")


def resets_at(period: str) -> str:
    """When the UTC window ``2026-11-23`` (day) or ``2026-11`` (month) ends, as ISO 8601."""
    if len(period) == 7:
        year, month = int(period[:4]), int(period[5:])
        nxt = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=timezone.utc)
    else:
        nxt = datetime.strptime(period, "%Y-%m-%d").replace(tzinfo=timezone.utc) + timedelta(days=1)
    return nxt.strftime("%Y-%m-%dT%H:%M:%SZ")


def check_can_pay(state: BudgetStatus, cheapest_usd: float) -> None:
    """BudgetExceeded, naming the window and when it resets, when what is left in a budget
    window cannot pay for the cheapest possible call (a $0 or spent budget refuses every call)."""
    for name, window in (("daily", state.day), ("monthly", state.month)):
        if window.limit_usd is None or window.remaining_usd is None:
            continue
        if window.remaining_usd <= 0 or window.remaining_usd < cheapest_usd:
            when = resets_at(window.period)
            raise BudgetExceeded(
                f"the {name} budget of key {state.key_id} (profile {state.profile!r}, UTC {window.period}) has "
                f"${window.remaining_usd:.4f} left of ${window.limit_usd:.2f}, less than the cheapest possible "
                f"call (${cheapest_usd:.6f}); it resets at {when}",
                key_id=state.key_id, window=name, limit=window.limit_usd, used=window.used_usd,
                needed=cheapest_usd, resets_at=when,
            )


class Reservation(msgspec.Struct, frozen=True, kw_only=True):
    task_id: str
    key_id: str
    amount_usd: float
    actual_usd: float | None
    state: Literal["reserved", "settled", "released"]
    day: str
    created_at: datetime


class BudgetWindow(msgspec.Struct, frozen=True, kw_only=True):
    period: str
    """``2026-11-23`` or ``2026-11`` (UTC)."""
    limit_usd: float | None
    """None: no budget in this window."""
    used_usd: float
    """Settled spend plus open reservations."""
    remaining_usd: float | None


class BudgetStatus(msgspec.Struct, frozen=True, kw_only=True):
    key_id: str
    account: str
    profile: str
    day: BudgetWindow
    month: BudgetWindow
    remaining_usd: float | None
    """The smaller of the day and month remainders; None when neither has a budget."""
    running: int
    max_concurrent: int
    override: bool = False
    """True when the key's account has its own budget instead of the profile's."""


def _reservation(row: Any) -> Reservation:
    return Reservation(
        task_id=row["task_id"],
        key_id=row["key_id"],
        amount_usd=to_usd(row["amount"]),
        actual_usd=None if row["actual"] is None else to_usd(row["actual"]),
        state=row["state"],
        day=row["day"],
        created_at=datetime.fromtimestamp(row["created_at"], timezone.utc),
    )


async def load_profile(db: aiosqlite.Connection, name: str) -> Profile:
    async with db.execute("SELECT data FROM profiles WHERE name = ?", (name,)) as cur:
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"no profile named {name!r}; `taskbus profiles list` shows them", profile=name)
    return decode_profile(row["data"])


async def _scalar(db: aiosqlite.Connection, sql: str, args: tuple[Any, ...]) -> Any:
    async with db.execute(sql, args) as cur:
        row = await cur.fetchone()
    return row[0] if row else None


_USED = (
    "SELECT COALESCE(SUM(CASE state WHEN 'reserved' THEN amount WHEN 'settled' THEN actual ELSE 0 END), 0)"
    " FROM ledger WHERE {col} = ? AND key_id IN (SELECT prefix FROM api_keys WHERE account = ?)"
)


async def status(db: aiosqlite.Connection, key_id: str, now: datetime) -> BudgetStatus:
    key = await fetch_key(db, key_id)
    profile = await load_profile(db, key.profile)
    async with db.execute("SELECT day_usd, month_usd FROM key_budgets WHERE account = ?", (key.account,)) as cur:
        override = await cur.fetchone()
    day_limit = profile.budget_day_usd
    month_limit = profile.budget_month_usd
    if override is not None:
        day_limit = override["day_usd"] if override["day_usd"] is not None else day_limit
        month_limit = override["month_usd"] if override["month_usd"] is not None else month_limit
    windows = []
    for col, period, limit in (("day", day_of(now), day_limit), ("month", month_of(now), month_limit)):
        used = int(await _scalar(db, _USED.format(col=col), (period, key.account)))
        remaining = None if limit is None else max(0, to_micro(limit) - used)
        windows.append(
            BudgetWindow(
                period=period,
                limit_usd=limit,
                used_usd=to_usd(used),
                remaining_usd=None if remaining is None else to_usd(remaining),
            )
        )
    day, month = windows
    rest = [w.remaining_usd for w in windows if w.remaining_usd is not None]
    running = await _scalar(
        db, "SELECT COUNT(*) FROM ledger WHERE key_id = ? AND state = 'reserved'", (key_id,)
    )
    return BudgetStatus(
        key_id=key_id,
        account=key.account,
        profile=profile.name,
        day=day,
        month=month,
        remaining_usd=min(rest) if rest else None,
        running=int(running),
        max_concurrent=profile.max_concurrent,
        override=override is not None,
    )


async def get_reservation(db: aiosqlite.Connection, task_id: str) -> Reservation | None:
    async with db.execute("SELECT * FROM ledger WHERE task_id = ?", (task_id,)) as cur:
        row = await cur.fetchone()
    return None if row is None else _reservation(row)


async def reserve(
    db: aiosqlite.Connection, key_id: str, task_id: str, amount_usd: float, now: datetime
) -> tuple[Reservation, bool]:
    """Reserve ``amount_usd`` for ``task_id``; (reservation, created). Same task id twice: no-op."""
    if not isinstance(amount_usd, (int, float)) or not math.isfinite(amount_usd) or amount_usd < 0:
        raise InvalidInput(f"reservation amount must be a non-negative number of USD (got {amount_usd!r})")
    existing = await get_reservation(db, task_id)
    if existing is not None:
        if existing.key_id != key_id:
            raise InvalidInput(f"task {task_id} already has a reservation under another key")
        return existing, False
    state = await status(db, key_id, now)
    if state.running >= state.max_concurrent:
        raise ConcurrencyLimit(
            f"key {key_id} already runs {state.running} task(s); profile {state.profile!r} allows "
            f"{state.max_concurrent} at once",
            key_id=key_id,
            running=state.running,
            limit=state.max_concurrent,
        )
    amount = to_micro(amount_usd)
    for name, window in (("daily", state.day), ("monthly", state.month)):
        if window.limit_usd is None:
            continue
        used = to_micro(window.used_usd)
        if used + amount > to_micro(window.limit_usd):
            raise BudgetExceeded(
                f"task {task_id} needs ${amount_usd:.4f} but the {name} budget of key {key_id} "
                f"(UTC {window.period}) has ${to_usd(max(0, to_micro(window.limit_usd) - used)):.4f} "
                f"left: ${window.used_usd:.4f} of ${window.limit_usd:.2f} spent or reserved",
                key_id=key_id,
                task_id=task_id,
                needed=amount_usd,
                limit=window.limit_usd,
                used=window.used_usd,
                window=name,
            )
    ts = now.timestamp()
    await db.execute(
        "INSERT INTO ledger (task_id, key_id, amount, actual, state, day, month, created_at, updated_at)"
        " VALUES (?, ?, ?, NULL, 'reserved', ?, ?, ?, ?)",
        (task_id, key_id, amount, day_of(now), month_of(now), ts, ts),
    )
    reservation = await get_reservation(db, task_id)
    assert reservation is not None
    return reservation, True


async def settle(
    db: aiosqlite.Connection, task_id: str, actual_usd: float, now: datetime
) -> tuple[Reservation, bool]:
    """Replace the reservation with the metered cost; settling twice keeps the first figure.

    A reservation released by the stale sweep is still settled: the money was spent.
    """
    if not isinstance(actual_usd, (int, float)) or not math.isfinite(actual_usd) or actual_usd < 0:
        raise InvalidInput(f"actual cost must be a non-negative number of USD (got {actual_usd!r})")
    existing = await get_reservation(db, task_id)
    if existing is None:
        raise NotFound(f"task {task_id} has no reservation to settle", task_id=task_id)
    if existing.state == "settled":
        return existing, False
    await db.execute(
        "UPDATE ledger SET state = 'settled', actual = ?, updated_at = ? WHERE task_id = ?",
        (to_micro(actual_usd), now.timestamp(), task_id),
    )
    settled = await get_reservation(db, task_id)
    assert settled is not None
    return settled, True


async def release(db: aiosqlite.Connection, task_id: str, now: datetime) -> tuple[Reservation | None, bool]:
    """Drop an open reservation (the task never ran). Unknown or closed: no-op."""
    existing = await get_reservation(db, task_id)
    if existing is None or existing.state != "reserved":
        return existing, False
    await db.execute(
        "UPDATE ledger SET state = 'released', actual = 0, updated_at = ? WHERE task_id = ?",
        (now.timestamp(), task_id),
    )
    return await get_reservation(db, task_id), True


async def sweep_stale(db: aiosqlite.Connection, older_than_s: float, now: datetime) -> list[str]:
    """Release reservations still open after ``older_than_s``; returns their task ids.

    Their task rows, if still ``accepted`` or ``running``, become ``failed`` with error
    code ``stale_reservation`` so the registry does not show them alive forever.
    """
    if older_than_s < 0:
        raise InvalidInput(f"older_than_s must not be negative (got {older_than_s})")
    cutoff = now.timestamp() - older_than_s
    async with db.execute(
        "SELECT task_id FROM ledger WHERE state = 'reserved' AND created_at < ? ORDER BY created_at", (cutoff,)
    ) as cur:
        ids = [row[0] for row in await cur.fetchall()]
    ts = now.timestamp()
    for task_id in ids:
        await db.execute(
            "UPDATE ledger SET state = 'released', actual = 0, updated_at = ? WHERE task_id = ?", (ts, task_id)
        )
        await db.execute(
            "UPDATE tasks SET status = 'failed', error_code = 'stale_reservation', updated_at = ?,"
            " finished_at = ? WHERE task_id = ? AND status IN ('accepted', 'running')",
            (ts, ts, task_id),
        )
    await db.execute("DELETE FROM rate_events WHERE ts < ?", (ts - RATE_WINDOW_S,))
    return ids


async def set_key_budget(
    db: aiosqlite.Connection, key_id: str, day_usd: float | None, month_usd: float | None, now: datetime
) -> str:
    """Per-account override (the account of ``key_id``); None keeps the current value."""
    key = await fetch_key(db, key_id)
    await db.execute(
        "INSERT INTO key_budgets (account, day_usd, month_usd, updated_at) VALUES (?, ?, ?, ?)"
        " ON CONFLICT(account) DO UPDATE SET"
        " day_usd = COALESCE(excluded.day_usd, key_budgets.day_usd),"
        " month_usd = COALESCE(excluded.month_usd, key_budgets.month_usd),"
        " updated_at = excluded.updated_at",
        (key.account, day_usd, month_usd, now.timestamp()),
    )
    return key.account


async def check_rate(db: aiosqlite.Connection, key_id: str, now: datetime) -> int:
    """Sliding one-minute window in SQLite: count this key's requests, refuse or record one.

    Returns how many requests remain in the window after this one.
    """
    key = await fetch_key(db, key_id)
    limit = (await load_profile(db, key.profile)).rate_limit_per_min
    ts = now.timestamp()
    await db.execute("DELETE FROM rate_events WHERE key_id = ? AND ts <= ?", (key_id, ts - RATE_WINDOW_S))
    count = int(await _scalar(db, "SELECT COUNT(*) FROM rate_events WHERE key_id = ?", (key_id,)))
    if count >= limit:
        oldest = float(await _scalar(db, "SELECT MIN(ts) FROM rate_events WHERE key_id = ?", (key_id,)))
        retry = max(0.0, oldest + RATE_WINDOW_S - ts)
        raise RateLimited(
            f"key {key_id} made {count} requests in the last minute; profile {key.profile!r} allows "
            f"{limit} per minute (retry in {retry:.1f}s)",
            key_id=key_id,
            limit=limit,
            retry_after_s=retry,
        )
    await db.execute("INSERT INTO rate_events (key_id, ts) VALUES (?, ?)", (key_id, ts))
    return limit - count - 1
