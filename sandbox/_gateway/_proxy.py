"""The gateway's request handler: credential check, policy, metering, forwarding.

Routes: ``POST /v1/messages`` (JSON or SSE, ``?beta=true`` accepted) is metered and
capped; ``POST /v1/messages/count_tokens`` is forwarded after the same model check and
tool filter (it is free, so not metered); ``HEAD /`` and ``GET /`` answer 200 ``{}``
without going upstream (Claude Code checks that its base URL is reachable); everything
else is a 404 in the Anthropic error shape.
"""

from __future__ import annotations

import hmac
import logging
import time
from dataclasses import dataclass
from typing import Literal

import msgspec

from bus import BudgetExceeded, InvalidInput, Policy, PolicyDenied

from ._allow import check_betas, check_body, check_query
from ._client import HttpResponse, UpstreamFailed, UpstreamUnavailable
from ._filter import check_model, decode_body, encode_body, filter_tools
from ._http import HttpRequest, Responder
from ._metered import Callback, CallOutcome, MeteredModel, notify
from ._sse import SseUsageReader, read_json_message
from ._upstream import Upstream

__all__ = ["GatewayHandler", "SecurityNotice", "anthropic_error"]

logger = logging.getLogger(__name__)

MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"
MAX_ERROR_BODY = 64 * 1024
MAX_JSON_BODY = 64 * 1024 * 1024
MAX_NOTICES_PER_KIND = 20
MAX_LISTED_TOOLS = 50
_RESPONSE_HEADERS = frozenset({"content-type", "request-id", "retry-after", "x-should-retry"})
_JSON = ("content-type", "application/json")


@dataclass(frozen=True, slots=True)
class SecurityNotice:
    """Something the gateway refused or removed; the runner makes it a ``security`` event."""

    kind: str
    """bad_placeholder, request_refused, model_denied, tool_dropped, notices_suppressed."""
    detail: str
    severity: Literal["info", "warning", "critical"] = "warning"


_encode = msgspec.json.Encoder().encode


def anthropic_error(status: int, message: str, error_type: str | None = None) -> tuple[list[tuple[str, str]], bytes]:
    """Headers and body of an error in the Anthropic API's shape."""
    error_type = error_type or {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        413: "request_too_large",
        429: "rate_limit_error",
    }.get(status, "api_error")
    body = _encode({"type": "error", "error": {"type": error_type, "message": message}})
    return [_JSON], body


def _response_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    return [
        (name.lower(), value)
        for name, value in headers
        if name.lower() in _RESPONSE_HEADERS or name.lower().startswith("anthropic-ratelimit-")
    ]


class GatewayHandler:
    """Handles one HTTP request from the sandbox (called by ``UnixHttpServer``)."""

    def __init__(
        self,
        policy: Policy,
        placeholder_key: str,
        metered: MeteredModel,
        *,
        on_security: Callback[SecurityNotice] | None = None,
        reserve_timeout: float = 600.0,
        extra_betas: frozenset[str] = frozenset(),
    ) -> None:
        self.policy = policy
        self._extra_betas = extra_betas
        self._placeholder = placeholder_key.encode()
        self.metered = metered
        self.upstream: Upstream = metered.upstream
        self._on_security = on_security
        self._allowed_tools = None if "*" in policy.tools else frozenset(policy.tools)
        self.dropped_tools: set[str] = set()
        self._notices: dict[str, int] = {}
        self._reserve_timeout = reserve_timeout

    # -- security notices, rate limited per kind so a looping agent cannot flood the bus
    async def _security(self, kind: str, detail: str, severity: Literal["info", "warning", "critical"] = "warning") -> None:
        count = self._notices.get(kind, 0) + 1
        self._notices[kind] = count
        logger.warning("gateway security %s for task %s: %s", kind, self.policy.task_id, detail)
        if count <= MAX_NOTICES_PER_KIND:
            await notify(self._on_security, SecurityNotice(kind, detail, severity))
        elif count == MAX_NOTICES_PER_KIND + 1:
            await notify(
                self._on_security,
                SecurityNotice("notices_suppressed", f"more {kind} notices of this task are suppressed", "warning"),
            )

    def _authorized(self, request: HttpRequest) -> bool | None:
        """True: the placeholder; False: a wrong credential; None: no credential at all."""
        presented = []
        for name, value in request.headers:
            if name == "x-api-key":
                presented.append(value)
            elif name == "authorization":
                scheme, _, token = value.partition(" ")
                presented.append(token.strip() if scheme.lower() == "bearer" else value)
        if not presented:
            return None
        return all(hmac.compare_digest(v.encode(), self._placeholder) for v in presented)

    async def __call__(self, request: HttpRequest, response: Responder) -> None:
        if request.path == "/" and request.method in ("GET", "HEAD"):  # Claude Code's reachability check
            await response.full(200, [_JSON], b"{}")
            return
        if request.path not in (MESSAGES, COUNT_TOKENS) or request.method != "POST":
            await response.full(404, *anthropic_error(404, f"{request.method} {request.path}: not served by the taskbus model gateway"))
            return
        authorized = self._authorized(request)
        if not authorized:
            what = "no credential" if authorized is None else "a wrong credential"
            await self._security("bad_placeholder", f"request to {request.path} with {what}", "critical")
            await response.full(401, *anthropic_error(401, "invalid x-api-key"))
            return
        try:
            check_query(request.query)
            check_betas(request.headers, self._extra_betas)
            body = decode_body(request.body)
            check_body(body)
        except InvalidInput as exc:
            await response.full(400, *anthropic_error(400, exc.message))
            return
        except PolicyDenied as exc:
            await self._security("request_refused", f"{request.path}: {exc.message}")
            await response.full(400, *anthropic_error(400, f"taskbus: {exc.message}"))
            return
        try:
            model = check_model(body, self.policy)
        except InvalidInput as exc:
            await response.full(400, *anthropic_error(400, exc.message))
            return
        except PolicyDenied as exc:
            await self._security("model_denied", exc.message)
            await response.full(403, *anthropic_error(403, exc.message))
            return
        dropped = filter_tools(body, self._allowed_tools)
        new = sorted(set(dropped) - self.dropped_tools)
        if new:
            self.dropped_tools.update(new)
            listed = ", ".join(repr(n)[1:-1] for n in new[:MAX_LISTED_TOOLS])
            more = f" and {len(new) - MAX_LISTED_TOOLS} more" if len(new) > MAX_LISTED_TOOLS else ""
            await self._security(
                "tool_dropped",
                f"tool definitions not allowed by the policy were removed before reaching the model: {listed}{more}",
                "info",
            )
        if request.path == COUNT_TOKENS:
            await self._count_tokens(request, body, response)
        else:
            await self._messages(request, body, model, response)

    async def _count_tokens(self, request: HttpRequest, body: dict, response: Responder) -> None:
        headers = self.upstream.headers(request.headers)
        try:
            upstream, content = await self.upstream.post(COUNT_TOKENS, request.query, encode_body(body), headers)
        except UpstreamUnavailable as exc:
            await response.full(502, *anthropic_error(502, f"taskbus: {exc.message}"))
            return
        except UpstreamFailed as exc:
            await response.full(502, *anthropic_error(502, f"taskbus: {exc.message}"))
            return
        if upstream.status_code >= 400:
            content = self.upstream.redact(content[:MAX_ERROR_BODY].decode("utf-8", "replace")).encode()
        await response.full(upstream.status_code, _response_headers(upstream.headers), content)

    async def _messages(self, request: HttpRequest, body: dict, model: str, response: Responder) -> None:
        started = time.monotonic()
        headers = self.upstream.headers(request.headers)
        try:
            reservation = await self.metered.reserve(
                body,
                body_bytes=len(request.body),
                headers=headers,
                query=request.query,
                wait_timeout=self._reserve_timeout,
            )
        except InvalidInput as exc:
            await response.full(400, *anthropic_error(400, exc.message))
            return
        except BudgetExceeded as exc:
            logger.info("task %s: model call refused: %s", self.policy.task_id, exc.message)
            hdrs, payload = anthropic_error(400, f"taskbus: {exc.message}. No further model calls are allowed for this task.")
            await response.full(400, [*hdrs, ("x-should-retry", "false")], payload)
            return
        except TimeoutError:
            await response.full(
                429, *anthropic_error(429, "taskbus: other model calls of this task are holding the rest of its budget; retry later")
            )
            return
        outcome = CallOutcome()
        try:
            async with self.metered.forward(
                reservation, MESSAGES, request.query, encode_body(body), headers, outcome, started=started
            ) as upstream:
                await self._relay(upstream, response, outcome)
        except UpstreamUnavailable as exc:
            await response.full(502, *anthropic_error(502, f"taskbus: {self.upstream.redact(exc.message)}"))
        except UpstreamFailed as exc:
            logger.warning("task %s: model call failed: %s", self.policy.task_id, exc.message)
            if not response.started:
                await response.full(502, *anthropic_error(502, f"taskbus: {self.upstream.redact(exc.message)}"))

    async def _relay(self, upstream: HttpResponse, response: Responder, outcome: CallOutcome) -> None:
        status = upstream.status_code
        headers = _response_headers(upstream.headers)
        if status >= 400:
            raw = bytearray()
            async for chunk in upstream.aiter_raw():
                raw += chunk
                if len(raw) > MAX_ERROR_BODY:
                    break
            text = self.upstream.redact(bytes(raw[:MAX_ERROR_BODY]).decode("utf-8", "replace"))
            await response.full(status, headers, text.encode())
            return
        if upstream.header("content-type").startswith("text/event-stream"):
            reader = SseUsageReader()
            outcome.streamed = True
            await response.start(status, headers)
            try:
                async for chunk in upstream.aiter_raw():
                    reader.feed(chunk)
                    await response.send(chunk)
                await response.end()
            finally:
                outcome.read(reader.usage, complete=reader.completed, stop_reason=reader.stop_reason)
            return
        raw = bytearray()
        async for chunk in upstream.aiter_raw():
            raw += chunk
            if len(raw) > MAX_JSON_BODY:
                raise UpstreamFailed(f"the model API response is over {MAX_JSON_BODY} bytes")
        usage, stop_reason, _model = read_json_message(bytes(raw))
        outcome.read(usage, complete=usage is not None, stop_reason=stop_reason)
        await response.full(status, headers, bytes(raw))
