"""Budgets: the types callers see (windows per UTC day and month, a key's status, a
reservation), the money helpers and the can-it-pay check. The ledger itself is in
``_ledger`` (KV entries changed by compare-and-set).

A reservation belongs to the UTC day and month it was made in. A window's use is
``open reservations + settled actual costs``; released ones count nothing. Amounts are
integer micro-USD so sums are exact. Budgets are counted per *account* (all keys of one
rotation chain); concurrency and rate per key.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Literal

import msgspec

from bus import BudgetExceeded

MICRO = 1_000_000


def to_micro(usd: float) -> int:
    return round(usd * MICRO)


def to_usd(micro: int | None) -> float:
    return 0.0 if micro is None else micro / MICRO


def day_of(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m-%d")


def month_of(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y-%m")


def resets_at(period: str) -> str:
    """When the UTC window ``2026-11-23`` (day) or ``2026-11`` (month) ends, as ISO 8601."""
    if len(period) == 7:
        year, month = int(period[:4]), int(period[5:])
        nxt = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
    else:
        nxt = datetime.strptime(period, "%Y-%m-%d").replace(tzinfo=UTC) + timedelta(days=1)
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
                key_id=state.key_id,
                window=name,
                limit=window.limit_usd,
                used=window.used_usd,
                needed=cheapest_usd,
                resets_at=when,
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
