"""The per-task meter: running total, in-flight reservations and the hard cost cap.

Every model call goes through ``reserve`` before it is forwarded and ``settle`` after:

- ``reserve`` prices the call's worst case (its input tokens at the dearest input rate,
  cache write or plain, plus ``max_tokens`` at the output rate), lowers ``max_tokens``
  so that the worst case fits what is left of the cap after what was spent AND what
  calls still in flight may spend, and holds that worst case until the call settles.
  So concurrent calls of one task can never together overshoot the cap.
- When not even ``min_output_tokens`` fit, and that is because of calls still in flight,
  the call waits for them to settle (bounded); when it is because of money already
  spent, the meter is ``exhausted`` and ``BudgetExceeded`` is raised.
- ``settle`` charges the metered usage (or, when the usage is unknown, e.g. a stream
  that broke off, the whole worst case) and frees the reservation.

Cache reads are priced at their own rate: with ``cache_read_credit``, the prompt prefix
that the task's previous call of the same model left in the cache (its cache-read plus
cache-write tokens, if it settled less than ``CACHE_FRESH_S`` ago) is priced at the
cache-read rate; the rest of the input at the dearer of input and cache write. If the
upstream misses the cache after all, the truth is charged (and logged): a call can then
exceed its reservation by at most that prefix times (cache write - cache read), and the
next call finds the cap (nearly) reached.

A cap of 0 means nothing may be spent: every call is refused (there is no "unlimited").
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field

from bus import BudgetExceeded, Usage

from ._pricing import PriceTable, Rates, cost_pusd, pusd_to_usd, usd_to_pusd

__all__ = ["CallRecord", "Meter", "Reservation"]

logger = logging.getLogger(__name__)

CACHE_FRESH_S = 270.0
"""A cached prefix younger than this is expected to be read (the API keeps it 5 minutes)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CallRecord:
    """One metered model call, handed to ``on_call`` (the runner makes a ModelCall event)."""

    model: str
    usage: Usage
    cost_usd: float
    total_cost_usd: float
    duration_ms: int
    status: int
    stop_reason: str | None = None
    streamed: bool = False
    max_tokens: int | None = None
    """``max_tokens`` as forwarded (after lowering to fit the cap)."""
    requested_max_tokens: int | None = None
    input_tokens_bound: int = 0
    """Input tokens the worst case was computed from (count_tokens, or the fallback bound)."""
    charged_worst_case: bool = False
    """True when the usage was unknown and the call was charged its whole worst case."""


@dataclass(slots=True, kw_only=True)
class Reservation:
    model: str
    rates: Rates
    input_tokens: int
    max_tokens: int
    requested_max_tokens: int
    worst_pusd: int
    settled: bool = field(default=False)


class Meter:
    """Running total and hard cap of one task (or one completion)."""

    def __init__(
        self,
        cap_usd: float,
        prices: PriceTable,
        *,
        min_output_tokens: int = 1,
        input_margin: float = 0.02,
        cache_read_credit: bool = True,
    ) -> None:
        if min_output_tokens < 1:
            raise ValueError("min_output_tokens must be at least 1")
        self.prices = prices
        self.cap_pusd = usd_to_pusd(cap_usd)
        self.min_output_tokens = min_output_tokens
        self.input_margin = input_margin
        self.spent_pusd = 0
        self.reserved_pusd = 0
        self.calls = 0
        self.refusals = 0
        """Calls refused because the cap was reached."""
        self.usage = Usage()
        self.exhausted = False
        self.cache_read_credit = cache_read_credit
        self._cached: dict[str, tuple[int, float]] = {}
        """model -> (prefix tokens its last call left in the cache, when it settled)."""
        self._settled = asyncio.Condition()

    # -- figures
    @property
    def cap_usd(self) -> float:
        return pusd_to_usd(self.cap_pusd)

    @property
    def spent_usd(self) -> float:
        return pusd_to_usd(self.spent_pusd)

    @property
    def remaining_usd(self) -> float:
        return pusd_to_usd(max(0, self.cap_pusd - self.spent_pusd))

    def input_bound(self, counted: int) -> int:
        """Counted input tokens plus the safety margin (count_tokens is an estimate)."""
        return counted + math.ceil(counted * self.input_margin)

    def input_cost(self, model: str, rates: Rates, input_tokens: int) -> int:
        """What ``input_tokens`` of ``model`` may cost, by the cache rules of the module docstring."""
        credit = 0
        cached = self._cached.get(model)
        if self.cache_read_credit and cached is not None and time.monotonic() - cached[1] < CACHE_FRESH_S:
            credit = min(input_tokens, cached[0])
        return credit * rates.cache_read + (input_tokens - credit) * rates.input_worst

    # -- reserve / settle
    def try_reserve(self, model: str, input_tokens: int, max_tokens: int) -> Reservation | None:
        """Reserve now, or None if the call only fits once in-flight calls settle.

        Raises BudgetExceeded (and marks the meter exhausted) when it cannot fit at all.
        """
        rates, _known = self.prices.lookup(model)
        input_cost = self.input_cost(model, rates, input_tokens)
        for available, final in (
            (self.cap_pusd - self.spent_pusd - self.reserved_pusd, False),
            (self.cap_pusd - self.spent_pusd, True),
        ):
            room = available - input_cost
            out_room = -1 if room < 0 else (room // rates.output if rates.output else max_tokens)
            if out_room >= self.min_output_tokens:
                if final:
                    return None  # fits once the calls in flight have settled
                granted = min(max_tokens, out_room)
                worst = input_cost + granted * rates.output
                self.reserved_pusd += worst
                return Reservation(
                    model=model,
                    rates=rates,
                    input_tokens=input_tokens,
                    max_tokens=granted,
                    requested_max_tokens=max_tokens,
                    worst_pusd=worst,
                )
        self.exhausted = True
        self.refusals += 1
        need = input_cost + self.min_output_tokens * rates.output
        raise BudgetExceeded(
            f"the cost cap of this task (${self.cap_usd:.6f}) is reached: ${self.spent_usd:.6f} "
            f"spent, and the smallest call to {model} with {input_tokens} input tokens needs "
            f"${pusd_to_usd(need):.6f}",
            limit=self.cap_usd,
            spent=self.spent_usd,
        )

    async def reserve(self, model: str, input_tokens: int, max_tokens: int, *, timeout: float = 600.0) -> Reservation:
        """``try_reserve``, waiting (at most ``timeout`` s) for in-flight calls to settle."""
        async with asyncio.timeout(timeout):
            async with self._settled:
                while True:
                    reservation = self.try_reserve(model, input_tokens, max_tokens)
                    if reservation is not None:
                        return reservation
                    await self._settled.wait()

    async def settle(self, reservation: Reservation, usage: Usage | None) -> tuple[int, bool]:
        """Charge a reserved call; returns (cost in pico-USD, charged the worst case?)."""
        if reservation.settled:
            raise RuntimeError("reservation settled twice")
        reservation.settled = True
        self.reserved_pusd -= reservation.worst_pusd
        worst_case = usage is None
        cost = reservation.worst_pusd if usage is None else cost_pusd(usage, reservation.rates)
        if cost > reservation.worst_pusd:
            logger.warning(
                "model %s reported usage costing %d pUSD, above the reserved worst case %d pUSD "
                "(input bound %d, max_tokens %d); the upstream's count_tokens under-counted",
                reservation.model,
                cost,
                reservation.worst_pusd,
                reservation.input_tokens,
                reservation.max_tokens,
            )
        self.spent_pusd += cost
        self.calls += 1
        if usage is not None:
            self.usage = self.usage + usage
            prefix = usage.cache_read_input_tokens + usage.cache_creation_input_tokens
            self._cached[reservation.model] = (prefix, time.monotonic())
        if self.spent_pusd >= self.cap_pusd:
            self.exhausted = True
        async with self._settled:
            self._settled.notify_all()
        return cost, worst_case

    async def release(self, reservation: Reservation) -> None:
        """Free a reservation of a call that was never sent (nothing charged)."""
        if reservation.settled:
            return
        reservation.settled = True
        self.reserved_pusd -= reservation.worst_pusd
        async with self._settled:
            self._settled.notify_all()
