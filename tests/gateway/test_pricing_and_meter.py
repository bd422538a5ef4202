"""The price arithmetic and the hard cap, on their own (no network)."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bus import BudgetExceeded, ConfigError, ModelPrice, Usage
from sandbox._gateway import Meter, PriceTable
from sandbox._gateway._pricing import cost_pusd, pusd_to_usd, usd_to_pusd

PRICES = {
    "claude-opus-4-8": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.5),
    "claude-sonnet-4-6": ModelPrice(input=3.0, output=15.0, cache_write=3.75, cache_read=0.3),
    "claude-haiku-4-5": ModelPrice(input=1.0, output=5.0, cache_write=1.25, cache_read=0.1),
}


def test_cost_is_tokens_times_the_price_per_million() -> None:
    rates, known = PriceTable(PRICES).lookup("claude-sonnet-4-6")
    usage = Usage(input_tokens=1000, output_tokens=500, cache_creation_input_tokens=2000, cache_read_input_tokens=10000)
    expected = (1000 * 3.0 + 500 * 15.0 + 2000 * 3.75 + 10000 * 0.3) / 1e6
    assert known
    assert pusd_to_usd(cost_pusd(usage, rates)) == pytest.approx(expected, abs=1e-15)


def test_a_dated_model_id_is_priced_as_its_family() -> None:
    table = PriceTable(PRICES)
    assert table.lookup("claude-haiku-4-5-20251001") == table.lookup("claude-haiku-4-5")


def test_an_unknown_model_is_priced_at_the_dearest_rates_with_one_warning(caplog: pytest.LogCaptureFixture) -> None:
    table = PriceTable(PRICES)
    with caplog.at_level(logging.WARNING):
        rates, known = table.lookup("some-new-model")
        table.lookup("some-new-model")
    assert not known
    assert rates == table.lookup("claude-opus-4-8")[0]
    assert sum("some-new-model" in r.getMessage() for r in caplog.records) == 1


def test_an_empty_price_table_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="price table is empty"):
        PriceTable({})


def test_the_cap_is_rounded_down_never_up() -> None:
    assert usd_to_pusd(0.1) == 100_000_000_000
    assert pusd_to_usd(usd_to_pusd(0.3)) <= 0.3


async def test_max_tokens_is_lowered_so_the_worst_case_fits_the_cap() -> None:
    # sonnet: input worst rate 3.75 $/Mtok (cache write), output 15 $/Mtok.
    meter = Meter(0.01, PriceTable(PRICES))
    reservation = await meter.reserve("claude-sonnet-4-6", 1000, 32000)
    # 0.01 USD - 1000 * 3.75e-6 = 0.00625 USD left for output -> 416 tokens at 15e-6.
    assert reservation.max_tokens == 416
    assert reservation.requested_max_tokens == 32000
    assert reservation.worst_pusd <= meter.cap_pusd


async def test_a_call_whose_input_alone_does_not_fit_is_refused_and_exhausts_the_meter() -> None:
    meter = Meter(0.001, PriceTable(PRICES))
    with pytest.raises(BudgetExceeded, match="cost cap of this task"):
        await meter.reserve("claude-sonnet-4-6", 1000, 100)
    assert meter.exhausted
    assert meter.spent_usd == 0


async def test_a_zero_cap_refuses_every_call() -> None:
    meter = Meter(0.0, PriceTable(PRICES))
    with pytest.raises(BudgetExceeded):
        await meter.reserve("claude-haiku-4-5", 1, 1)


async def test_a_call_with_unknown_usage_is_charged_its_worst_case() -> None:
    meter = Meter(1.0, PriceTable(PRICES))
    reservation = await meter.reserve("claude-haiku-4-5", 100, 100)
    cost, worst = await meter.settle(reservation, None)
    assert worst and cost == reservation.worst_pusd == 100 * 1_250_000 + 100 * 5_000_000


async def test_a_call_waits_for_calls_in_flight_and_then_fits() -> None:
    meter = Meter(0.002, PriceTable(PRICES))
    first = await meter.reserve("claude-haiku-4-5", 1000, 100)  # worst 0.00125 + 0.0005
    assert meter.try_reserve("claude-haiku-4-5", 400, 100) is None  # fits only after `first`
    waiting = asyncio.create_task(meter.reserve("claude-haiku-4-5", 400, 100, timeout=5))
    await asyncio.sleep(0)  # a scheduling yield: the task runs up to its wait
    assert not waiting.done()
    await meter.settle(first, Usage(input_tokens=1000, output_tokens=10))  # 0.00105 spent
    second = await asyncio.wait_for(waiting, 5)
    assert second.max_tokens == 90  # (0.002 - 0.00105 - 400 * 1.25e-6) / 5e-6
    assert meter.spent_pusd + second.worst_pusd <= meter.cap_pusd
    assert not meter.exhausted


@settings(max_examples=200, deadline=None)
@given(
    cap=st.floats(min_value=0, max_value=2, allow_nan=False),
    calls=st.lists(
        st.tuples(
            st.sampled_from([*sorted(PRICES), "unknown-model"]),
            st.integers(0, 300_000),  # input tokens
            st.integers(1, 64_000),  # max_tokens asked
            st.floats(0, 1),  # share of the granted output actually used
            st.booleans(),  # usage known?
        ),
        max_size=30,
    ),
)
def test_no_sequence_of_calls_spends_more_than_the_cap(cap: float, calls: list) -> None:
    async def run() -> None:
        meter = Meter(cap, PriceTable(PRICES))
        open_reservations = []
        for model, tokens, max_tokens, share, known in calls:
            try:
                reservation = meter.try_reserve(model, tokens, max_tokens)
            except BudgetExceeded:
                assert meter.exhausted
                continue
            if reservation is None:  # would fit after the calls in flight: settle one
                first = open_reservations.pop(0)
                await meter.settle(first, None)
                continue
            assert reservation.max_tokens <= max_tokens
            open_reservations.append(reservation)
            assert meter.spent_pusd + meter.reserved_pusd <= meter.cap_pusd
            if len(open_reservations) > 3:
                r = open_reservations.pop(0)
                usage = Usage(input_tokens=r.input_tokens, output_tokens=int(r.max_tokens * share)) if known else None
                await meter.settle(r, usage)
        for r in open_reservations:
            await meter.settle(r, None)
        assert meter.spent_pusd <= meter.cap_pusd
        assert meter.spent_usd <= cap

    asyncio.run(run())


def _cached_call_usage() -> Usage:
    # a call that read 50,000 cached tokens and wrote 20,000 more: a 70,000-token cached prefix
    return Usage(input_tokens=1000, output_tokens=100, cache_creation_input_tokens=20000, cache_read_input_tokens=50000)


async def _meter_after_a_cached_call(cap: float, **options: bool) -> Meter:
    meter = Meter(10.0, PriceTable(PRICES), **options)
    first = await meter.reserve("claude-sonnet-4-6", 71000, 100)
    await meter.settle(first, _cached_call_usage())
    meter.cap_pusd = meter.spent_pusd + usd_to_pusd(cap)  # ``cap`` is what is left for the next call
    return meter


async def test_the_cached_prefix_of_the_previous_call_is_priced_at_the_cache_read_rate() -> None:
    # Next call: 72,000 input tokens, 70,000 of them the cached prefix, 1,000 output tokens.
    # Real cost at most 70,000 x 0.3 + 2,000 x 3.75 + 1,000 x 15 = 43,500 uUSD: it fits 0.05 USD.
    meter = await _meter_after_a_cached_call(0.05)
    left = meter.remaining_usd
    reservation = await meter.reserve("claude-sonnet-4-6", 72000, 1000)
    assert reservation.max_tokens == 1000
    assert reservation.worst_pusd == (70000 * 300_000 + 2000 * 3_750_000 + 1000 * 15_000_000)
    assert pusd_to_usd(reservation.worst_pusd) <= left


async def test_without_the_credit_the_same_call_is_refused() -> None:
    # Priced as if nothing were cached, 72,000 x 3.75 = 0.27 USD: over what is left.
    meter = await _meter_after_a_cached_call(0.05, cache_read_credit=False)
    with pytest.raises(BudgetExceeded):
        await meter.reserve("claude-sonnet-4-6", 72000, 1000)


async def test_the_credit_is_per_model_and_never_above_the_request() -> None:
    meter = await _meter_after_a_cached_call(1.0)
    rates, _ = PriceTable(PRICES).lookup("claude-haiku-4-5")
    assert meter.input_cost("claude-haiku-4-5", rates, 10) == 10 * rates.input_worst
    sonnet, _ = PriceTable(PRICES).lookup("claude-sonnet-4-6")
    assert meter.input_cost("claude-sonnet-4-6", sonnet, 10) == 10 * sonnet.cache_read
