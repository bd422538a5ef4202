"""Model providers for ``complete`` jobs.

``ModelProvider`` is the seam: ``anthropic`` (below) calls the Messages API directly
over HTTP; ``claude-cli`` (``claude -p`` without tools, in a sandbox) plugs in beside it.

``AnthropicProvider`` goes through the same metering and hard cost cap as the gateway
(``sandbox._gateway.MeteredModel``): count input tokens, reserve the worst case, lower
``max_tokens`` to fit ``policy.max_cost_usd``, stream, settle from the metered usage.

Request mapping: ``messages`` as given, then ``prompt`` as a last user message;
``system``, ``temperature``, ``max_tokens`` (default ``default_max_tokens``) as given.
The model is ``policy.model`` (the router's choice; it must be in ``policy.models``).
``effort`` is used by the router and ``cache`` by the server's result cache, so neither
is sent to the model.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, runtime_checkable

from bus import (
    CompleteRequest,
    InvalidInput,
    ModelError,
    Policy,
    PolicyDenied,
    Settings,
    Usage,
)

from ._gateway import (
    Callback,
    CallOutcome,
    CallRecord,
    Meter,
    MeteredModel,
    PriceTable,
    SseUsageReader,
    Upstream,
    UpstreamFailed,
    UpstreamUnavailable,
    encode_body,
    notify,
)

__all__ = ["AnthropicProvider", "CompletionResult", "ModelProvider"]

logger = logging.getLogger(__name__)

MAX_ERROR_BODY = 16 * 1024


@dataclass(frozen=True, slots=True, kw_only=True)
class CompletionResult:
    text: str
    model: str
    usage: Usage
    cost_usd: float
    stop_reason: str | None
    duration_ms: int


@runtime_checkable
class ModelProvider(Protocol):
    """Runs one completion under a policy; streamed text goes to ``on_delta``."""

    name: str

    async def complete(
        self,
        request: CompleteRequest,
        policy: Policy,
        *,
        on_delta: Callback[str] | None = None,
        on_call: Callback[CallRecord] | None = None,
    ) -> CompletionResult:
        """Raises PolicyDenied, InvalidInput, BudgetExceeded (cap too small) or ModelError."""
        ...


def build_body(request: CompleteRequest, model: str, default_max_tokens: int) -> dict[str, Any]:
    messages: list[dict[str, Any]] = [{"role": m.role, "content": m.content} for m in request.messages or ()]
    if request.prompt is not None:
        messages.append({"role": "user", "content": request.prompt})
    if not messages:
        raise InvalidInput("a completion needs `prompt` or `messages`")
    if messages[-1]["role"] != "user":
        raise InvalidInput("the last message of a completion must be from the user")
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.max_tokens or default_max_tokens,
        "messages": messages,
        "stream": True,
    }
    if request.system:
        body["system"] = request.system
    if request.temperature is not None:
        body["temperature"] = request.temperature
    return body


class AnthropicProvider:
    """``async with AnthropicProvider(settings, upstream=shared) as provider:``."""

    name = "anthropic"

    def __init__(self, settings: Settings, *, upstream: Upstream | None = None, default_max_tokens: int = 4096) -> None:
        self._own_upstream = upstream is None
        self.upstream = upstream or Upstream(settings)
        self.prices = PriceTable(settings.prices)
        self.default_max_tokens = default_max_tokens

    async def __aenter__(self) -> AnthropicProvider:
        if self._own_upstream:
            await self.upstream.__aenter__()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if self._own_upstream:
            await self.upstream.aclose()

    async def complete(
        self,
        request: CompleteRequest,
        policy: Policy,
        *,
        on_delta: Callback[str] | None = None,
        on_call: Callback[CallRecord] | None = None,
    ) -> CompletionResult:
        started = time.monotonic()
        model = policy.model
        if model not in policy.models:
            raise PolicyDenied(f"model {model!r} is not in this task's allowed models", model=model)
        body = build_body(request, model, self.default_max_tokens)
        metered = MeteredModel(self.upstream, Meter(policy.max_cost_usd, self.prices), on_call=on_call)
        headers = self.upstream.headers(())
        content = encode_body(body)
        reservation = await metered.reserve(body, body_bytes=len(content), headers=headers)
        content = encode_body(body)  # max_tokens may have been lowered
        texts: list[str] = []
        pending: list[str] = []
        reader = SseUsageReader(on_text=pending.append)
        failure: str | None = None
        outcome = CallOutcome()
        try:
            async with metered.forward(reservation, "/v1/messages", "", content, headers, outcome, started=started) as response:
                outcome.streamed = True
                try:
                    if response.status_code >= 400:
                        raw = (await response.aread(limit=MAX_ERROR_BODY * 64))[:MAX_ERROR_BODY]
                        failure = f"the model API answered {response.status_code}: {raw.decode('utf-8', 'replace')}"
                    else:
                        async for chunk in response.aiter_raw():
                            reader.feed(chunk)
                            if pending:
                                for text in pending:
                                    texts.append(text)
                                    await notify(on_delta, text)
                                pending.clear()
                        if reader.error:
                            failure = f"the model stream failed: {reader.error}"
                        elif not reader.completed:
                            failure = "the model stream ended before message_stop"
                finally:
                    outcome.read(reader.usage, complete=reader.completed, stop_reason=reader.stop_reason)
        except UpstreamUnavailable as exc:
            raise ModelError(self.upstream.redact(exc.message)) from None
        except UpstreamFailed as exc:
            failure = exc.message
        record = outcome.record
        assert record is not None  # forward settles on the way out
        if failure is not None:
            raise ModelError(self.upstream.redact(failure))
        return CompletionResult(
            text="".join(texts),
            model=reader.model or model,
            usage=record.usage,
            cost_usd=record.total_cost_usd,
            stop_reason=reader.stop_reason,
            duration_ms=int((time.monotonic() - started) * 1000),
        )
