"""The ledger in KV: one budget entry per account, one rate window per key (pure functions
over their JSON documents; ``_kv.CasEntries`` applies them with compare-and-set).

Account entry ``a.<account>``: the current UTC day and month with what is used in each
(open reservations made in that period plus settled costs of reservations made in it, in
integer micro-USD) and the open reservations ``{task_id: [key_id, amount, day, month, ts]}``.
A reservation is one compare-and-set on this entry, so two servers can never both spend the
last dollar. The open map is bounded by the keys' concurrency limits; a period that has
ended is dropped when the entry is next written, so the entry never grows.

Rate entry ``r.<key_id>``: requests counted per UTC second over the last 60 seconds (at most
60 numbers, whatever the limit), so it is correct across servers and never grows. The
window is the last 60 whole seconds, so a refusal's ``retry_after`` is rounded up to the
second where the request that fills the window was made.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Any

from bus import BudgetExceeded, ConcurrencyLimit, InvalidInput, RateLimited

from ._budgets import BudgetStatus, BudgetWindow, day_of, month_of, to_micro, to_usd
from ._kv import Doc

RATE_WINDOW_S = 60


def account_key(account: str) -> str:
    return f"a.{account}"


def rate_key(key_id: str) -> str:
    return f"r.{key_id}"


def reservation_key(task_id: str) -> str:
    return f"res.{task_id}"


def current(doc: Doc | None, now: datetime) -> Doc:
    """``doc`` moved to ``now``'s day and month (a new period starts at zero used)."""
    day, month = day_of(now), month_of(now)
    out: Doc = {"day": day, "day_used": 0, "month": month, "month_used": 0, "open": {}}
    if doc:
        out["open"] = dict(doc.get("open", {}))
        if doc.get("day") == day:
            out["day_used"] = int(doc.get("day_used", 0))
        if doc.get("month") == month:
            out["month_used"] = int(doc.get("month_used", 0))
    return out


def running(doc: Doc, key_id: str) -> int:
    return sum(1 for entry in doc["open"].values() if entry[0] == key_id)


def check_amount(amount_usd: Any, what: str) -> None:
    if not isinstance(amount_usd, (int, float)) or not math.isfinite(amount_usd) or amount_usd < 0:
        raise InvalidInput(f"{what} must be a non-negative number of USD (got {amount_usd!r})")


def budget_status(
    doc: Doc | None,
    *,
    key_id: str,
    account: str,
    profile: str,
    max_concurrent: int,
    day_limit: float | None,
    month_limit: float | None,
    override: bool,
    now: datetime,
) -> BudgetStatus:
    entry = current(doc, now)
    windows = []
    for period, used, limit in ((entry["day"], entry["day_used"], day_limit), (entry["month"], entry["month_used"], month_limit)):
        remaining = None if limit is None else max(0, to_micro(limit) - used)
        windows.append(
            BudgetWindow(
                period=period, limit_usd=limit, used_usd=to_usd(used), remaining_usd=None if remaining is None else to_usd(remaining)
            )
        )
    day, month = windows
    rest = [w.remaining_usd for w in windows if w.remaining_usd is not None]
    return BudgetStatus(
        key_id=key_id,
        account=account,
        profile=profile,
        day=day,
        month=month,
        remaining_usd=min(rest) if rest else None,
        running=running(entry, key_id),
        max_concurrent=max_concurrent,
        override=override,
    )


def reserve(doc: Doc | None, state: BudgetStatus, task_id: str, amount_usd: float, now: datetime) -> Doc | None:
    """The entry with ``task_id``'s reservation added (None: it is already there), or the
    refusal. ``state`` carries the limits; its usage is recomputed from ``doc``."""
    entry = current(doc, now)
    if task_id in entry["open"]:
        return None
    key_id = state.key_id
    count = running(entry, key_id)
    if count >= state.max_concurrent:
        raise ConcurrencyLimit(
            f"key {key_id} already runs {count} task(s); profile {state.profile!r} allows {state.max_concurrent} at once",
            key_id=key_id,
            running=count,
            limit=state.max_concurrent,
        )
    amount = to_micro(amount_usd)
    for name, window, used in (("daily", state.day, entry["day_used"]), ("monthly", state.month, entry["month_used"])):
        if window.limit_usd is None:
            continue
        if used + amount > to_micro(window.limit_usd):
            raise BudgetExceeded(
                f"task {task_id} needs ${amount_usd:.4f} but the {name} budget of key {key_id} "
                f"(UTC {window.period}) has ${to_usd(max(0, to_micro(window.limit_usd) - used)):.4f} "
                f"left: ${to_usd(used):.4f} of ${window.limit_usd:.2f} spent or reserved",
                key_id=key_id,
                task_id=task_id,
                needed=amount_usd,
                limit=window.limit_usd,
                used=to_usd(used),
                window=name,
            )
    entry["open"][task_id] = [key_id, amount, entry["day"], entry["month"], now.timestamp()]
    entry["day_used"] += amount
    entry["month_used"] += amount
    return entry


def close(doc: Doc | None, task_id: str, reservation: Doc, actual: int | None, now: datetime) -> Doc | None:
    """The entry with ``task_id``'s reservation replaced by ``actual`` (settle) or dropped
    (release, ``actual`` None). ``reservation`` is its record (amount, day, month, whether it
    is still open there). None: nothing to change."""
    entry = current(doc, now)
    was_open = entry["open"].pop(task_id, None) is not None
    delta = (actual or 0) - (reservation["amount"] if was_open else 0)
    if not was_open and actual is None:
        return None
    if reservation["day"] == entry["day"]:
        entry["day_used"] = max(0, entry["day_used"] + delta)
    if reservation["month"] == entry["month"]:
        entry["month_used"] = max(0, entry["month_used"] + delta)
    return entry


def stale(doc: Doc | None, cutoff: float) -> list[str]:
    return [task_id for task_id, entry in (doc or {}).get("open", {}).items() if entry[4] < cutoff]


def count_request(doc: Doc | None, *, key_id: str, profile: str, limit: int, now: datetime) -> tuple[Doc, int]:
    """The window with one more request now, and how many remain; RateLimited when full."""
    second = int(now.timestamp())
    counts = {int(s): int(n) for s, n in (doc or {}).get("s", {}).items() if int(s) > second - RATE_WINDOW_S}
    total = sum(counts.values())
    if total >= limit:
        retry = max(0.0, min(counts) + RATE_WINDOW_S - now.timestamp())
        raise RateLimited(
            f"key {key_id} made {total} requests in the last minute; profile {profile!r} allows {limit} per minute (retry in {retry:.1f}s)",
            key_id=key_id,
            limit=limit,
            retry_after_s=retry,
        )
    counts[second] = counts.get(second, 0) + 1
    return {"s": {str(s): n for s, n in counts.items()}}, limit - total - 1
