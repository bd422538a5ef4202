"""Streamable HTTP for the MCP server, with bearer API keys.

Every HTTP request is authenticated: no ``Authorization: Bearer <key>`` header, or an
unknown, revoked or expired key, gets **401** (the SDK's bearer middleware; the failure
is audited). The verified token carries the key's display prefix (``client_id``) and
profile (``subject``), which every tool reads as the caller; stateful MCP sessions are
bound to that principal. The key itself is not kept in the token.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import uvicorn
from mcp.server import MCPServer
from mcp.server.auth.provider import AccessToken
from mcp.server.auth.settings import AuthSettings
from mcp.server.transport_security import TransportSecuritySettings
from starlette.applications import Starlette

from bus import AuthError, BusError

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
        auth=AuthSettings(
            issuer_url=base,  # type: ignore[arg-type]
            resource_server_url=f"{base}{MCP_PATH}",  # type: ignore[arg-type]
            required_scopes=[SCOPE],
            validate_token_resource=False,
        ),
        **mcp_kwargs,
    )
    app = mcp.streamable_http_app(streamable_http_path=MCP_PATH, host=host, transport_security=_security(host, port))
    return app, mcp


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
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]  # the CLI owns signals
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
