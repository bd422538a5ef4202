"""``ModelGateway``: the per-task model gateway, served on a unix socket.

    async with Upstream(settings) as upstream:          # one per runner (shared pool)
        async with ModelGateway(settings, policy, run_dir / "model.sock", placeholder,
                                upstream=upstream, on_call=..., on_security=...) as gw:
            ...  # run the sandbox with run_dir bind-mounted at /run/taskbus
        if gw.exhausted: ...  # the task ends budget_exceeded

Without ``upstream=`` the gateway opens its own client.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
from pathlib import Path
from types import TracebackType

from bus import Policy, Settings

from .._privdirs import ensure_dir
from ._http import UnixHttpServer
from ._meter import CallRecord, Meter
from ._metered import Callback, MeteredModel
from ._pricing import PriceTable
from ._proxy import GatewayHandler, SecurityNotice, anthropic_error
from ._upstream import Upstream

__all__ = ["ModelGateway", "new_placeholder_key"]

logger = logging.getLogger(__name__)


def new_placeholder_key() -> str:
    """A fresh per-task credential for the sandbox; it only opens this task's gateway."""
    return "taskbus-placeholder-" + secrets.token_hex(24)


class ModelGateway:
    """Serves the Messages API on ``socket_path`` for one task, metered and capped."""

    def __init__(
        self,
        settings: Settings,
        policy: Policy,
        socket_path: str | os.PathLike[str],
        placeholder_key: str,
        *,
        on_call: Callback[CallRecord] | None = None,
        on_security: Callback[SecurityNotice] | None = None,
        upstream: Upstream | None = None,
        min_output_tokens: int = 1,
        max_body_bytes: int = 32 * 1024 * 1024,
        reserve_timeout: float = 600.0,
    ) -> None:
        if len(placeholder_key) < 16:
            raise ValueError("placeholder_key must be at least 16 characters (use new_placeholder_key())")
        if settings.upstream_api_key and placeholder_key == settings.upstream_api_key:
            raise ValueError("placeholder_key must not be the real upstream key")
        self.settings = settings
        self.policy = policy
        self.socket_path = Path(socket_path)
        self.meter = Meter(
            policy.max_cost_usd,
            PriceTable(settings.prices),
            min_output_tokens=min_output_tokens,
            cache_read_credit=settings.gateway_cache_read_credit,
        )
        self._own_upstream = upstream is None
        self.upstream = upstream or Upstream(settings)
        self._metered = MeteredModel(self.upstream, self.meter, on_call=on_call)
        self._handler = GatewayHandler(
            policy,
            placeholder_key,
            self._metered,
            on_security=on_security,
            reserve_timeout=reserve_timeout,
            extra_betas=frozenset(settings.gateway_extra_betas),
        )
        self._server = UnixHttpServer(self.socket_path, self._handler, error_body=anthropic_error, max_body_bytes=max_body_bytes)
        self._stack: contextlib.AsyncExitStack | None = None

    # -- what the runner reads
    @property
    def exhausted(self) -> bool:
        """True once a call was refused (or the spend reached the cap): end ``budget_exceeded``."""
        return self.meter.exhausted

    @property
    def spent_usd(self) -> float:
        return self.meter.spent_usd

    @property
    def dropped_tools(self) -> frozenset[str]:
        return frozenset(self._handler.dropped_tools)

    # -- lifecycle
    async def __aenter__(self) -> ModelGateway:
        stack = contextlib.AsyncExitStack()
        try:
            if self._own_upstream:
                await stack.enter_async_context(self.upstream)
            # the sandbox's user reaches the socket through this folder: created here
            # (never through a link) or, when the runner made it, checked to be ours
            ensure_dir(self.socket_path.parent, 0o755)
            await stack.enter_async_context(self._server)
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack
        logger.info(
            "model gateway for task %s on %s -> %s (cap $%.6f, models %s)",
            self.policy.task_id,
            self.socket_path,
            self.upstream.base_url,
            self.meter.cap_usd,
            ",".join(self.policy.models),
        )
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
            logger.info(
                "model gateway for task %s closed: %d calls, $%.6f of $%.6f%s",
                self.policy.task_id,
                self.meter.calls,
                self.meter.spent_usd,
                self.meter.cap_usd,
                " (cap reached)" if self.meter.exhausted else "",
            )
