"""Streamable HTTP for the MCP server, with bearer API keys.

Every HTTP request is authenticated: no ``Authorization: Bearer <key>`` header, or an
unknown, revoked or expired key, gets **401** (the SDK's bearer middleware; the failure
is audited) whose JSON body says which (``AuthFailureBody``). The verified token carries the key's display prefix (``client_id``) and
profile (``subject``), which every tool reads as the caller; stateful MCP sessions are
bound to that principal. The key itself is not kept in the token.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Iterator
from typing import Any

import uvicorn
from mcp.server import MCPServer
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette

from bus import AuthError, BusError, redact

from ._dispatch import Dispatcher
from ._mcp_app import create_mcp_server

logger = logging.getLogger(__name__)

SCOPE = "taskbus"
MCP_PATH = "/mcp"


class ApiKeyVerifier:
    """The SDK's ``TokenVerifier``: a taskbus API key in, an ``AccessToken`` (or None -> 401) out."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.dispatcher = dispatcher

    async def verify_token(self, token: str) -> AccessToken | None:
        try:
            caller = await self.dispatcher.authenticate(token, via="mcp-http")
        except AuthError:
            return None
        return AccessToken(token=caller.key_id, client_id=caller.key_id, subject=caller.profile, scopes=[SCOPE])


class AuthFailureBody:
    """ASGI wrapper: a 401 says which of missing, unknown, revoked or expired the key was.

    The SDK's bearer middleware answers every failure with the same "Authentication
    required". This rewrites that body (and the WWW-Authenticate description) with the
    taskbus code and message. An unknown key is only "unknown API key": nothing says
    whether it exists anywhere else. The classification reads the key store directly, so
    the failure is audited once (by the verifier), not twice.
    """

    def __init__(self, app: Any, dispatcher: Dispatcher) -> None:
        self.app = app
        self.dispatcher = dispatcher

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        held: dict[str, Any] = {}

        async def send_wrapper(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start" and message.get("status") == 401:
                held["start"] = message
                return
            if "start" in held and message["type"] == "http.response.body":
                code, text = await self._why(scope)
                body = json.dumps({"error": "invalid_token", "error_description": f"[{code}] {text}", "code": code}).encode()
                headers = [(k, v) for k, v in held["start"].get("headers", []) if k.lower() not in (b"content-length", b"www-authenticate")]
                headers += [
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", f'Bearer error="invalid_token", error_description="{code}"'.encode()),
                ]
                await send({**held.pop("start"), "headers": headers})
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        await self.app(scope, receive, send_wrapper)

    async def _why(self, scope: Any) -> tuple[str, str]:
        token = None
        for name, value in scope.get("headers", []):
            if name.lower() == b"authorization":
                scheme, _, rest = value.decode("latin-1").strip().partition(" ")
                token = rest.strip() if scheme.lower() == "bearer" and rest.strip() else None
        try:
            if token is None:
                raise AuthError("no API key given: send `Authorization: Bearer <key>`")
            await self.dispatcher.store.authenticate(token)
        except AuthError as exc:
            return exc.code, redact(exc.describe())
        except Exception:  # the store failed: say no more than the SDK would
            return "unauthorized", "Authentication required"
        return "unauthorized", "Authentication required (the key lacks the required scope)"


def _security(host: str, port: int) -> TransportSecuritySettings | None:
    if host in ("127.0.0.1", "localhost", "::1"):
        return None  # the SDK's default: localhost only (DNS-rebinding guard)
    if host in ("0.0.0.0", "::"):
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    return TransportSecuritySettings(
        allowed_hosts=[host, f"{host}:{port}"], allowed_origins=[f"http://{host}:{port}", f"https://{host}:{port}"]
    )


def create_http_app(dispatcher: Dispatcher, *, host: str, port: int, **mcp_kwargs: Any) -> tuple[Starlette, MCPServer]:
    """The Starlette app serving MCP at ``/mcp`` and the MCPServer behind it."""
    base = f"http://{host}:{port}"
    mcp = create_mcp_server(
        dispatcher,
        token_verifier=ApiKeyVerifier(dispatcher),
        auth=AuthSettings.model_validate(
            {  # validation turns the strings into URLs
                "issuer_url": base,
                "resource_server_url": f"{base}{MCP_PATH}",
                "required_scopes": [SCOPE],
                "validate_token_resource": False,
            }
        ),
        **mcp_kwargs,
    )
    app = mcp.streamable_http_app(streamable_http_path=MCP_PATH, host=host, transport_security=_security(host, port))
    app.add_middleware(AuthFailureBody, dispatcher=dispatcher)
    return app, mcp


class _Server(uvicorn.Server):
    """uvicorn without signal handlers of its own: the CLI owns signals (its stop event
    ends the service, which stops this server). uvicorn's default would swap the CLI's
    SIGINT/SIGTERM handlers for its own while serving and raise the signal again after."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve_http(
    app: Starlette,
    *,
    host: str,
    port: int,
    ready: asyncio.Event | None = None,
    bound: list[int] | None = None,
    start_timeout: float = 10.0,
) -> None:
    """Serve ``app`` with uvicorn until cancelled. ``bound`` receives the real port (for port 0)."""
    config = uvicorn.Config(app, host=host, port=port, log_level="warning", lifespan="on", access_log=False)
    server = _Server(config)
    task = asyncio.create_task(server.serve(), name="uvicorn")
    try:
        async with asyncio.timeout(start_timeout):
            while not server.started:
                if task.done():
                    break
                await asyncio.sleep(0.01)
        if not server.started:
            await task
            raise BusError(f"the HTTP server could not listen on {host}:{port}; is the port in use? (--port)")
        actual = server.servers[0].sockets[0].getsockname()[1] if server.servers else port
        if bound is not None:
            bound.append(actual)
        logger.info("MCP Streamable HTTP on http://%s:%d%s", host, actual, MCP_PATH)
        if ready is not None:
            ready.set()
        await asyncio.shield(task)
    finally:
        server.should_exit = True
        try:
            async with asyncio.timeout(10):
                await asyncio.shield(task)
        except (TimeoutError, asyncio.CancelledError):
            server.force_exit = True
        except SystemExit:
            pass
