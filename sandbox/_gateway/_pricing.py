"""Prices: USD per million tokens from ``Settings.prices``, as exact integer rates.

Money is counted in pico-USD (10^-12 USD) integers so that sums, reservations and the
cap comparison are exact; floats appear only at the edges (events, reports).

Model lookup: an exact key, else the longest key that the model id starts with followed
by ``-`` (``claude-haiku-4-5-20251001`` is priced as ``claude-haiku-4-5``), else the
worst case: every rate the most expensive one in the table (logged once per model).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal

from bus import ConfigError, ModelPrice, Usage

__all__ = ["PICO", "PriceTable", "Rates", "cost_pusd", "pusd_to_usd", "usd_to_pusd"]

logger = logging.getLogger(__name__)

PICO = 10**12
"""pico-USD per USD."""


@dataclass(frozen=True, slots=True)
class Rates:
    """pico-USD per token."""

    input: int
    output: int
    cache_write: int
    cache_read: int

    @property
    def input_worst(self) -> int:
        """The rate an input token costs at most, whatever the cache does with it."""
        return max(self.input, self.cache_write, self.cache_read)


def _per_token(usd_per_mtok: float) -> int:
    # USD/Mtok * 10^12 pUSD/USD / 10^6 tok/Mtok = USD/Mtok * 10^6 pUSD/token, rounded up.
    return int((Decimal(repr(float(usd_per_mtok))) * 10**6).to_integral_value(ROUND_CEILING))


def _rates(price: ModelPrice) -> Rates:
    return Rates(
        input=_per_token(price.input),
        output=_per_token(price.output),
        cache_write=_per_token(price.cache_write),
        cache_read=_per_token(price.cache_read),
    )


def usd_to_pusd(usd: float) -> int:
    """An amount in USD as pico-USD, rounded down (a cap never grows by rounding)."""
    if not math.isfinite(usd) or usd < 0:
        raise ValueError(f"not a valid amount of money: {usd!r}")
    return int((Decimal(repr(float(usd))) * PICO).to_integral_value(ROUND_FLOOR))


def pusd_to_usd(pusd: int) -> float:
    return pusd / PICO


def cost_pusd(usage: Usage, rates: Rates) -> int:
    return (
        usage.input_tokens * rates.input
        + usage.output_tokens * rates.output
        + usage.cache_creation_input_tokens * rates.cache_write
        + usage.cache_read_input_tokens * rates.cache_read
    )


class PriceTable:
    """Rates by model, with the prefix and unknown-model rules of the module docstring."""

    def __init__(self, prices: Mapping[str, ModelPrice]) -> None:
        if not prices:
            raise ConfigError("TASKBUS_PRICES", "the price table is empty; the model gateway cannot meter calls without prices")
        self._rates = {model: _rates(price) for model, price in prices.items()}
        self._by_length = sorted(self._rates, key=len, reverse=True)
        all_rates = list(self._rates.values())
        self.worst = Rates(
            input=max(r.input for r in all_rates),
            output=max(r.output for r in all_rates),
            cache_write=max(r.cache_write for r in all_rates),
            cache_read=max(r.cache_read for r in all_rates),
        )
        self._warned: set[str] = set()

    def lookup(self, model: str) -> tuple[Rates, bool]:
        """The rates of ``model`` and whether the table knows it."""
        rates = self._rates.get(model)
        if rates is not None:
            return rates, True
        for key in self._by_length:
            if model.startswith(key + "-"):
                return self._rates[key], True
        if model not in self._warned:
            self._warned.add(model)
            logger.warning(
                "no price for model %r; metering it at the most expensive rates in the table (add it to TASKBUS_PRICES)",
                model,
            )
        return self.worst, False
