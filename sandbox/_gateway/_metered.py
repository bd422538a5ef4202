"""One metered model call, shared by the gateway (requests from a sandbox) and the
``anthropic`` completion provider: reserve its worst case, forward, settle, report.

What a call is charged:

- a complete response (JSON with ``usage``, or a stream that reached ``message_stop``):
  its metered usage;
- an error status from the upstream (4xx/5xx, before any message started): nothing;
- no connection to the upstream could be made: nothing;
- anything else (a stream cut off by the client, the network or a timeout; a 200
  without usage; a transport error after the request was sent): the whole reserved
  worst case, because the upstream may bill tokens the gateway never saw.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from bus import Usage

from ._client import HttpResponse, UpstreamFailed
from ._filter import count_tokens_body, lower_max_tokens, requested_max_tokens
from ._meter import CallRecord, Meter, Reservation
from ._pricing import pusd_to_usd
from ._upstream import Upstream

__all__ = ["CallOutcome", "Callback", "MeteredModel", "fallback_input_bound", "notify"]

logger = logging.getLogger(__name__)

T = TypeVar("T")
Callback = Callable[[T], Awaitable[None] | None]


def fallback_input_bound(body_bytes: int) -> int:
    """Input tokens of a request when count_tokens failed: its size in bytes.

    A token stands for at least one byte of text, and the JSON around the text (keys,
    quotes, tool schemas) is larger than the API's per-message framing; base64 images
    are far larger than their token cost. So bytes >= tokens for text, images and tools.
    """
    return max(1, body_bytes)


async def notify(callback: Callback[T] | None, value: T) -> None:
    """Call a sync or async callback; its failure is logged, never raised into the call path."""
    if callback is None:
        return
    try:
        result = callback(value)
        if inspect.isawaitable(result):
            await result
    except Exception:
        logger.exception("callback %r failed", getattr(callback, "__name__", callback))


@dataclass(slots=True)
class CallOutcome:
    """What became of one forwarded model call, filled in as it goes; ``settle`` charges
    by it. ``answered``: the upstream gave an HTTP status; ``sent``: the request may have
    reached it (False only when the connection could not even be made); ``complete``: a
    JSON answer with usage, or a stream that reached ``message_stop``."""

    status: int = 502
    answered: bool = False
    sent: bool = False
    streamed: bool = False
    usage: Usage | None = None
    complete: bool = False
    stop_reason: str | None = None
    record: CallRecord | None = None
    """Set once the call is settled."""

    def read(self, usage: Usage | None, *, complete: bool, stop_reason: str | None) -> None:
        """What the relay read from the answer."""
        self.usage, self.complete, self.stop_reason = usage, complete, stop_reason


class MeteredModel:
    """The meter and the upstream of one task (or one completion), plus ``on_call``."""

    def __init__(self, upstream: Upstream, meter: Meter, *, on_call: Callback[CallRecord] | None = None) -> None:
        self.upstream = upstream
        self.meter = meter
        self.on_call = on_call

    async def reserve(
        self,
        body: dict[str, Any],
        *,
        body_bytes: int,
        headers: dict[str, str],
        query: str = "",
        wait_timeout: float = 600.0,
    ) -> Reservation:
        """Count input tokens, reserve the worst case and lower ``body['max_tokens']`` to fit.

        Raises InvalidInput (no valid max_tokens) or BudgetExceeded (nothing fits).
        """
        model = body["model"]
        requested = requested_max_tokens(body)
        counted = await self.upstream.count_tokens(count_tokens_body(body), headers, query)
        bound = self.meter.input_bound(counted) if counted is not None else fallback_input_bound(body_bytes)
        reservation = await self.meter.reserve(model, bound, requested, timeout=wait_timeout)
        lower_max_tokens(body, reservation.max_tokens)
        if reservation.max_tokens < requested:
            logger.info(
                "max_tokens of a %s call lowered from %d to %d to fit the cost cap",
                model,
                requested,
                reservation.max_tokens,
            )
        return reservation

    @contextlib.asynccontextmanager
    async def forward(
        self,
        reservation: Reservation,
        path: str,
        query: str,
        content: bytes,
        headers: dict[str, str],
        outcome: CallOutcome,
        *,
        started: float,
    ) -> AsyncIterator[HttpResponse]:
        """Open the reserved call upstream; the caller relays the response and fills in
        ``outcome``. On the way out the call is always settled (``outcome.record``), also
        when opening it failed (UpstreamUnavailable, propagated: nothing was sent) or the
        relay failed (UpstreamFailed, propagated: the request may have been billed)."""
        try:
            response = await self.upstream.open(path, query, content, headers)
            outcome.status, outcome.answered, outcome.sent = response.status_code, True, True
            try:
                yield response
            finally:
                await response.aclose()
        except UpstreamFailed:
            outcome.sent = True
            raise
        finally:
            outcome.record = await self.settle(reservation, outcome, started=started)

    async def settle(self, reservation: Reservation, outcome: CallOutcome, *, started: float) -> CallRecord:
        """Charge the call by the rules of the module docstring and report it to ``on_call``."""
        status, usage, answered, sent = outcome.status, outcome.usage, outcome.answered, outcome.sent
        complete, stop_reason, streamed = outcome.complete, outcome.stop_reason, outcome.streamed
        charged: Usage | None
        if not answered:
            charged = None if sent else Usage()
        elif status >= 400 and usage is None:
            charged = Usage()
        elif complete and usage is not None:
            charged = usage
        else:
            charged = None
        cost, worst = await self.meter.settle(reservation, charged)
        record = CallRecord(
            model=reservation.model,
            usage=usage or Usage(),
            cost_usd=pusd_to_usd(cost),
            total_cost_usd=self.meter.spent_usd,
            duration_ms=int((time.monotonic() - started) * 1000),
            status=status,
            stop_reason=stop_reason,
            streamed=streamed,
            max_tokens=reservation.max_tokens,
            requested_max_tokens=reservation.requested_max_tokens,
            input_tokens_bound=reservation.input_tokens,
            charged_worst_case=worst,
        )
        logger.info(
            "model call %s status=%d in=%d out=%d cache_w=%d cache_r=%d cost=$%.6f total=$%.6f cap=$%.6f %dms%s",
            record.model,
            status,
            record.usage.input_tokens,
            record.usage.output_tokens,
            record.usage.cache_creation_input_tokens,
            record.usage.cache_read_input_tokens,
            record.cost_usd,
            record.total_cost_usd,
            self.meter.cap_usd,
            record.duration_ms,
            " (charged worst case)" if worst else "",
        )
        await notify(self.on_call, record)
        return record
