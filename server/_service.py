"""The ``taskbus serve`` process: Bus, profiles Store, dispatcher, submit gateway and the
MCP server (stdio or Streamable HTTP) under one TaskGroup.

``run_server`` is also what ``taskbus up`` runs. It returns when ``stop`` is set (or,
on stdio, when the client closes stdin); tasks still running keep running on their
runners, and the next start resumes following them.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Literal

from bus import AuthError, Bus, Settings, ensure_control_plane, load_or_create_job_secret
from profiles import Store

from ._admission_undo import sweep_abandoned
from ._console import Console, console_enabled
from ._http import create_http_app, serve_http
from ._mcp_app import create_mcp_server
from ._metrics import MeteredDispatcher, metrics_route
from ._submit_gateway import SubmitGateway

logger = logging.getLogger(__name__)

Transport = Literal["stdio", "http", "none"]
SWEEP_EVERY_S = 60.0
STALE_EVERY = 10
"""The daily stale sweep runs every STALE_EVERY sweeps (10 minutes)."""
STALE_AFTER_S = 86_400.0
ABANDONED_AFTER_S = 300.0
"""A reservation open this long for a task with no event is an admission a dead server left."""


async def _sweep(bus: Bus, store: Store) -> None:
    """Every minute, undo the admissions dead servers left half-done; every ten minutes,
    release reservations of tasks that never finished (a day old)."""
    rounds = 0
    while True:
        await asyncio.sleep(SWEEP_EVERY_S)
        rounds += 1
        try:
            await sweep_abandoned(bus, store, older_than_s=ABANDONED_AFTER_S)
            if rounds % STALE_EVERY == 0:
                await store.sweep_stale(STALE_AFTER_S)
        except Exception as exc:
            logger.warning("reservation sweep failed: %s", exc)


async def run_server(
    settings: Settings,
    *,
    transport: Transport = "http",
    host: str | None = None,
    port: int | None = None,
    ready: asyncio.Event | None = None,
    stop: asyncio.Event | None = None,
    bound: list[int] | None = None,
) -> None:
    """Run the server until ``stop`` is set (stdio: also until stdin closes).

    ``transport="none"`` serves only the NATS submit gateway. ``bound`` receives the
    HTTP port actually used (useful with ``port=0``).
    """
    host = host or settings.http_host
    port = settings.http_port if port is None else port
    secret = load_or_create_job_secret(settings)
    stop = stop or asyncio.Event()
    async with await Bus.for_settings(settings, name="taskbus-server") as bus:
        await bus.ensure_streams(
            events_max_age_s=settings.events_max_age_days * 86_400,
            artifacts_max_bytes=settings.artifacts_store_max_bytes,
            artifacts_max_age_s=settings.artifacts_store_max_age_days * 86_400,
        )
        await ensure_control_plane(bus.js, bus.subjects, replicas=bus.replicas, task_retention_s=settings.task_retention_days * 86_400)
        async with Store.for_settings(settings, bus=bus) as store:
            async with MeteredDispatcher(settings, bus, store, secret=secret) as dispatcher:
                if transport == "stdio":
                    try:
                        await dispatcher.authenticate(settings.api_key, via="mcp-stdio")
                    except AuthError as exc:
                        raise AuthError(f"the stdio MCP server needs a valid key in TASKBUS_API_KEY: {exc.message}") from None
                async with SubmitGateway(dispatcher), asyncio.TaskGroup() as tg:
                    tasks = [tg.create_task(_sweep(bus, store), name="sweep"), tg.create_task(stop.wait())]
                    if transport == "http":
                        app, _ = create_http_app(dispatcher, host=host, port=port)
                        app.router.routes.append(metrics_route(dispatcher))
                        if console_enabled(settings, host):
                            app.router.routes.append(Console(dispatcher).mount())
                        tasks.append(tg.create_task(serve_http(app, host=host, port=port, ready=ready, bound=bound)))
                    elif transport == "stdio":
                        mcp = create_mcp_server(dispatcher, api_key=settings.api_key)
                        tasks.append(tg.create_task(mcp.run_stdio_async()))
                    if transport != "http" and ready is not None:
                        ready.set()
                    # the first of: stop set, stdin closed, HTTP server ended
                    await asyncio.wait(tasks[1:], return_when=asyncio.FIRST_COMPLETED)
                    for task in tasks:
                        task.cancel()
    logger.info("server stopped")
