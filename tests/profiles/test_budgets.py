"""Budgets: atomic reservations, windows, settle/release, stale sweep, concurrency, rate."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from bus import BudgetExceeded, ConcurrencyLimit, RateLimited
from profiles import Store


async def _key(store: Store, profile: str) -> str:
    _, record = await store.create_key(profile)
    return record.prefix


async def test_fifty_concurrent_reservations_against_a_budget_for_five_admit_exactly_five(store, make_profile):
    await make_profile("race", budget_day_usd=5.0, budget_month_usd=100.0, max_concurrent=100)
    key = await _key(store, "race")

    results = await asyncio.gather(*(store.reserve(key, f"task-{i}", 1.0) for i in range(50)), return_exceptions=True)

    ok = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(ok) == 5
    assert len(refused) == 45
    status = await store.remaining_budget(key)
    assert status.day.used_usd == pytest.approx(5.0)
    assert status.day.remaining_usd == 0.0
    assert "daily budget" in refused[0].message and "$5.00" in refused[0].message


async def test_reservations_from_several_connections_never_overshoot_the_budget(settings, store, make_profile, clock):
    await make_profile("race", budget_day_usd=5.0, max_concurrent=100)
    key = await _key(store, "race")
    stores = [Store.for_settings(settings, now=clock) for _ in range(5)]  # five NATS connections
    for s in stores:
        await s.connect()
    try:
        results = await asyncio.gather(*(stores[i % 5].reserve(key, f"task-{i}", 1.0) for i in range(50)), return_exceptions=True)
    finally:
        for s in stores:
            await s.close()

    unexpected = [r for r in results if isinstance(r, BaseException) and not isinstance(r, BudgetExceeded)]
    assert unexpected == []
    assert sum(not isinstance(r, BaseException) for r in results) == 5
    assert (await store.remaining_budget(key)).day.used_usd == pytest.approx(5.0)


async def test_settle_replaces_the_reservation_with_the_actual_cost_once(store, make_profile):
    await make_profile("p", budget_day_usd=10.0)
    key = await _key(store, "p")
    await store.reserve(key, "t1", 4.0)

    first = await store.settle("t1", 1.25)
    again = await store.settle("t1", 3.0)
    released = await store.release("t1")

    assert first.state == again.state == released.state == "settled"
    assert again.actual_usd == 1.25
    status = await store.remaining_budget(key)
    assert status.day.used_usd == pytest.approx(1.25)
    assert status.running == 0


async def test_release_frees_the_reservation_and_is_idempotent(store, make_profile):
    await make_profile("p", budget_day_usd=2.0)
    key = await _key(store, "p")
    await store.reserve(key, "t1", 2.0)
    with pytest.raises(BudgetExceeded):
        await store.reserve(key, "t2", 0.5)

    await store.release("t1")
    await store.release("t1")
    assert await store.release("never-reserved") is None

    assert (await store.remaining_budget(key)).day.used_usd == 0.0
    assert (await store.reserve(key, "t2", 2.0)).state == "reserved"


async def test_reserving_the_same_task_twice_counts_it_once(store, make_profile):
    await make_profile("p", budget_day_usd=3.0)
    key = await _key(store, "p")
    await store.reserve(key, "t1", 2.0)
    await store.reserve(key, "t1", 2.0)
    assert (await store.remaining_budget(key)).day.used_usd == pytest.approx(2.0)


async def test_the_day_window_rolls_over_at_utc_midnight_and_the_month_window_still_counts(store, make_profile, clock):
    clock.current = datetime(2026, 3, 15, 23, 59, tzinfo=UTC)
    await make_profile("p", budget_day_usd=5.0, budget_month_usd=8.0, max_concurrent=10)
    key = await _key(store, "p")
    await store.reserve(key, "d1", 5.0)
    with pytest.raises(BudgetExceeded, match="daily"):
        await store.reserve(key, "d1b", 0.01)

    clock.advance(120)  # 2026-03-16 00:01
    await store.reserve(key, "d2", 3.0)
    with pytest.raises(BudgetExceeded, match="monthly budget") as refused:
        await store.reserve(key, "d2b", 1.0)
    assert "2026-03" in refused.value.message

    clock.current = datetime(2026, 4, 1, 0, 0, 1, tzinfo=UTC)
    assert (await store.reserve(key, "m2", 5.0)).day == "2026-04-01"


async def test_a_key_budget_override_beats_the_profile_budget(store, make_profile):
    await make_profile("p", budget_day_usd=100.0)
    key = await _key(store, "p")
    await store.set_budget(key_id=key, day_usd=1.0)
    status = await store.remaining_budget(key)
    assert status.override and status.day.limit_usd == 1.0
    with pytest.raises(BudgetExceeded):
        await store.reserve(key, "t1", 1.5)


async def test_the_concurrency_limit_admits_exactly_max_concurrent_running_tasks(store, make_profile):
    await make_profile("p", max_concurrent=3)
    key = await _key(store, "p")

    results = await asyncio.gather(*(store.reserve(key, f"t{i}", 0.01) for i in range(20)), return_exceptions=True)

    admitted = [r for r in results if not isinstance(r, BaseException)]
    limited = [r for r in results if isinstance(r, ConcurrencyLimit)]
    assert len(admitted) == 3 and len(limited) == 17
    assert "allows 3 at once" in limited[0].message
    await store.settle(admitted[0].task_id, 0.0)
    assert (await store.reserve(key, "t-next", 0.01)).state == "reserved"


async def test_stale_reservations_are_released_by_the_sweep_and_can_still_be_settled(store, make_profile, clock):
    await make_profile("p", budget_day_usd=2.0)
    key = await _key(store, "p")
    await store.reserve(key, "old", 2.0)
    await store.record_task("old", key, "p", "task", 2.0)
    clock.advance(1800)
    assert await store.sweep_stale(3600) == []

    clock.advance(3600)
    await store.reserve(key, "fresh", 0.0)
    assert await store.sweep_stale(3600) == ["old"]

    assert (await store.remaining_budget(key)).day.used_usd == 0.0
    task = await store.get_task("old")
    assert task.status == "failed" and task.error_code == "stale_reservation"
    late = await store.settle("old", 0.4)
    assert late.state == "settled" and late.actual_usd == 0.4


async def test_rate_limit_refuses_the_request_over_the_per_minute_limit_until_the_window_slides(store, make_profile, clock):
    await make_profile("p", rate_limit_per_min=3)
    key = await _key(store, "p")
    remaining = [await store.check_rate(key) for _ in range(3)]
    assert remaining == [2, 1, 0]
    with pytest.raises(RateLimited, match="allows 3 per minute") as limited:
        await store.check_rate(key)
    assert limited.value.code == "rate_limited"

    clock.advance(61)
    assert await store.check_rate(key) == 2


async def test_negative_amounts_are_refused(store, make_profile):
    await make_profile("p")
    key = await _key(store, "p")
    from bus import InvalidInput

    with pytest.raises(InvalidInput):
        await store.reserve(key, "t1", -1.0)
    with pytest.raises(InvalidInput):
        await store.set_budget(profile="p", day_usd=-5.0)
