"""The ASGI app of the scripted model server (plain ASGI: it is on every test's hot path).

Routes: ``POST /v1/messages`` (JSON or SSE), ``POST /v1/messages/count_tokens``,
``GET /v1/models[/<id>]``, ``GET|HEAD /`` (health). Anything else is a 404 in the
Anthropic error shape. Any failure of the app itself is a 500, never a crash.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Mapping
from typing import Any

import msgspec

from ._log import RequestLog
from ._reply import Reply, build_reply, build_structured_reply, error_body, input_tokens_for
from ._request import RequestView, decode_request
from ._script import Script, ScriptLoadError, Turn, default_script, resolve_script, shipped_scripts
from ._sse import sse_events

__all__ = ["ScriptedModelApp"]

logger = logging.getLogger(__name__)

MAX_BODY = 32 * 1024 * 1024
_encoder = msgspec.json.Encoder()
_JSON = [(b"content-type", b"application/json")]
_SSE = [(b"content-type", b"text/event-stream; charset=utf-8"), (b"cache-control", b"no-cache")]


class _HttpError(Exception):
    def __init__(self, status: int, error_type: str, message: str, headers: list[tuple[bytes, bytes]] | None = None):
        super().__init__(message)
        self.status, self.error_type, self.message = status, error_type, message
        self.headers = headers or []


class ScriptedModelApp:
    """Answers Messages API requests from ``script`` and from scripts named by markers.

    ``scripts`` adds named scripts a ``[script:NAME]`` marker can select (the shipped ones
    are always available). ``required_api_key``: requests without it (``x-api-key`` or
    ``Authorization: Bearer``) get a 401. ``log``: where each request is recorded.
    """

    def __init__(
        self,
        script: Script | None = None,
        *,
        scripts: Mapping[str, Script] | None = None,
        required_api_key: str | None = None,
        log: RequestLog | None = None,
    ) -> None:
        self.script = script or default_script()
        self._scripts: dict[str, Script] = {self.script.name: self.script, **(scripts or {})}
        self._key = required_api_key.encode() if required_api_key else None
        self._log = log
        self._shipped = shipped_scripts()
        self.requests = 0

    # -- scripts
    def _script_for(self, marker: str | None) -> Script:
        if marker is None:
            return self.script
        found = self._scripts.get(marker)
        if found is not None:
            return found
        if marker in self._shipped:
            try:
                found = resolve_script(marker)
            except ScriptLoadError as exc:
                raise _HttpError(500, "api_error", f"shipped script {marker!r} is broken: {exc}") from None
            self._scripts[marker] = found
            return found
        known = sorted(set(self._scripts) | set(self._shipped))
        raise _HttpError(400, "invalid_request_error", f"unknown script [script:{marker}]; known: {', '.join(known)}")

    def _select(self, view: RequestView) -> tuple[Script, tuple[int, Turn] | None]:
        script = self._script_for(view.marker)
        return script, script.select(view.reply, view.after_tool_result, view.user_text)

    @property
    def models(self) -> list[str]:
        seen: dict[str, None] = {}
        for script in self._scripts.values():
            for model in ([script.model] if script.model else []) + script.models:
                seen.setdefault(model, None)
        return list(seen)

    # -- ASGI
    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                while (await receive())["type"] != "lifespan.shutdown":
                    await send({"type": "lifespan.startup.complete"})
                await send({"type": "lifespan.shutdown.complete"})
            return
        self.requests += 1
        started = time.monotonic()
        record: dict[str, Any] = {"method": scope["method"], "path": scope["path"]}
        status = 500
        started_response = False

        async def tracked_send(message: dict[str, Any]) -> None:
            nonlocal started_response
            started_response = True
            await send(message)

        try:
            status = await self._route(scope, receive, tracked_send, record)
        except _HttpError as exc:
            status = exc.status
            record["error"] = exc.error_type
            if not started_response:
                await _send(send, exc.status, error_body(exc.error_type, exc.message), _JSON + exc.headers)
        except Exception:
            logger.exception("scripted model: %s %s failed", scope["method"], scope["path"])
            record["error"] = "api_error"
            if not started_response:
                await _send(send, 500, error_body("api_error", "internal error of the scripted model server"), _JSON)
        finally:
            if self._log is not None:
                record["status"] = status
                record["ms"] = round((time.monotonic() - started) * 1000, 2)
                self._log.write(scope, record)

    async def _route(self, scope: dict[str, Any], receive: Any, send: Any, record: dict[str, Any]) -> int:
        method, path = scope["method"], scope["path"].rstrip("/") or "/"
        if path == "/" and method in ("GET", "HEAD"):
            await _send(send, 200, b'{"ok":true}', _JSON)
            return 200
        if not path.startswith("/v1/"):
            raise _HttpError(404, "not_found_error", f"no route {method} {path}")
        self._authenticate(scope)
        if path == "/v1/messages" and method == "POST":
            return await self._messages(await _body(receive), send, record)
        if path == "/v1/messages/count_tokens" and method == "POST":
            return await self._count_tokens(await _body(receive), send, record)
        if path == "/v1/models" and method == "GET":
            data = [_model_info(m) for m in self.models]
            page = {"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
            await _send(send, 200, _encoder.encode(page), _JSON)
            return 200
        if path.startswith("/v1/models/") and method == "GET":
            model = path[len("/v1/models/") :]
            if model not in self.models:
                raise _HttpError(404, "not_found_error", f"model: {model}")
            await _send(send, 200, _encoder.encode(_model_info(model)), _JSON)
            return 200
        raise _HttpError(404, "not_found_error", f"no route {method} {path}")

    def _authenticate(self, scope: dict[str, Any]) -> None:
        if self._key is None:
            return
        given = b""
        for name, value in scope["headers"]:
            if name == b"x-api-key":
                given = value
            elif name == b"authorization" and value[:7].lower() == b"bearer " and not given:
                given = value[7:]
        if not given or not hmac.compare_digest(given, self._key):
            # A wrong key stays wrong: tell clients (Claude Code retries 401s 10 times) not to retry.
            raise _HttpError(401, "authentication_error", "invalid x-api-key", [(b"x-should-retry", b"false")])

    def _view(self, body: bytes, record: dict[str, Any], *, need_max_tokens: bool) -> RequestView:
        try:
            request = decode_request(body)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            raise _HttpError(400, "invalid_request_error", f"invalid request body: {exc}") from None
        if need_max_tokens and request.max_tokens is None:
            raise _HttpError(400, "invalid_request_error", "max_tokens: Field required")
        if not request.messages:
            raise _HttpError(400, "invalid_request_error", "messages: at least one message is required")
        view = RequestView(request)
        record.update(
            model=request.model,
            stream=request.stream,
            max_tokens=request.max_tokens,
            tools=view.tool_names,
            reply=view.reply,
            after_tool_result=view.after_tool_result,
            marker=view.marker,
            user_text=view.user_text[:2000],
        )
        return view

    async def _count_tokens(self, body: bytes, send: Any, record: dict[str, Any]) -> int:
        view = self._view(body, record, need_max_tokens=False)
        if view.request.output_schema() is not None:
            tokens = view.input_tokens
            record.update(side="structured_output", input_tokens=tokens)
        else:
            script, selected = self._select(view)
            turn = selected[1] if selected else None
            tokens = input_tokens_for(turn, view)
            if turn is not None:  # like the real API: the whole prompt, cached parts included
                tokens += turn.usage.cache_creation_input_tokens + turn.usage.cache_read_input_tokens
            record.update(script=script.name, turn=selected[0] if selected else None, input_tokens=tokens)
        await _send(send, 200, _encoder.encode({"input_tokens": tokens}), _JSON)
        return 200

    async def _messages(self, body: bytes, send: Any, record: dict[str, Any]) -> int:
        view = self._view(body, record, need_max_tokens=True)
        schema = view.request.output_schema()
        if schema is not None:
            # A side request (Claude Code's session title, summaries): never a script turn.
            reply = build_structured_reply(view, schema)
            record["side"] = "structured_output"
        else:
            script, selected = self._select(view)
            reply = build_reply(script, selected, view)
        record.update(script=reply.script, turn=reply.turn)
        if reply.delay_ms:
            await asyncio.sleep(reply.delay_ms / 1000)
        if reply.error is not None:
            err = reply.error
            headers = list(_JSON)
            if err.retry_after is not None:
                headers.append((b"retry-after", str(err.retry_after).encode()))
            if err.should_retry is not None:
                headers.append((b"x-should-retry", b"true" if err.should_retry else b"false"))
            raise _HttpError(err.status, err.error_type, err.message, headers[1:])
        record.update(
            input_tokens=reply.usage["input_tokens"],
            output_tokens=reply.usage["output_tokens"],
            stop_reason=reply.stop_reason,
        )
        if view.request.stream:
            await self._stream(reply, send)
        else:
            await _send(send, 200, _encoder.encode(reply.message()), _JSON + _request_id(reply))
        return 200

    async def _stream(self, reply: Reply, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE + _request_id(reply)})
        first = True
        for group in sse_events(reply):
            if not first and reply.chunk_delay_ms:
                await asyncio.sleep(reply.chunk_delay_ms / 1000)
            first = False
            await send({"type": "http.response.body", "body": b"".join(group), "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


def _request_id(reply: Reply) -> list[tuple[bytes, bytes]]:
    return [(b"request-id", b"req_" + reply.message_id[4:].encode())]


def _model_info(model: str) -> dict[str, Any]:
    return {"type": "model", "id": model, "display_name": model, "created_at": "2025-01-01T00:00:00Z"}


async def _body(receive: Any) -> bytes:
    chunks = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise _HttpError(400, "invalid_request_error", "client disconnected")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            raise _HttpError(413, "request_too_large", f"request body over {MAX_BODY} bytes")
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)


async def _send(send: Any, status: int, body: bytes, headers: list[tuple[bytes, bytes]]) -> None:
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
