"""Auditing failed authentication without letting a flood of bad keys fill the disk.

Every failure of one (door, reason) pair -- door: ``nats``, ``mcp-http``,
``mcp-stdio``; reason: the AuthError's message, e.g. ``unknown API key`` -- opens a
window of ``window_s`` seconds. The failure that opens it is audited at once (an
``auth_failure`` notice with ``detail.count = 1``); the failures after it in that window
are only counted, and one more notice with their ``count`` (and ``aggregated: true``)
is published when the window closes. So each pair costs at most two audit rows per
window, however many requests arrive, and no failure goes uncounted. The count per
row is what the alert rules add up (audit/_alerts.py).

At most ``max_pairs`` pairs are tracked; further reasons share one ``other`` pair.
``aclose()`` publishes the counts of windows still open.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bus import AuditNotice, AuthError

__all__ = ["AuthAuditThrottle"]

logger = logging.getLogger(__name__)

Publish = Callable[[AuditNotice], Awaitable[None]]


@dataclass(slots=True)
class _Window:
    opened: float
    code: str
    counted: int = 0
    """Failures after the first one, not yet audited."""


class AuthAuditThrottle:
    """``async with AuthAuditThrottle(publish, window_s=60) as throttle: await throttle.failed(exc, via=...)``."""

    def __init__(self, publish: Publish, *, window_s: float = 60.0, max_pairs: int = 256) -> None:
        if window_s <= 0:
            raise ValueError("window_s must be positive")
        self._publish = publish
        self.window_s = window_s
        self.max_pairs = max_pairs
        self._windows: dict[tuple[str, str], _Window] = {}
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> AuthAuditThrottle:
        self._flusher = asyncio.create_task(self._flush_loop(), name="auth-audit-flush")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Stop the flusher and publish every open window's count (safe to call twice)."""
        flusher, self._flusher = self._flusher, None
        if flusher is not None:
            flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await flusher
        await self.flush(everything=True)

    async def failed(self, exc: AuthError, *, via: str) -> None:
        """Audit (or count) one failed authentication."""
        pair = (via, exc.message[:200])
        if pair not in self._windows and len(self._windows) >= self.max_pairs:
            pair = (via, "other")
        window = self._windows.get(pair)
        if window is not None:
            window.counted += 1
            return
        self._windows[pair] = _Window(opened=time.monotonic(), code=exc.code)
        self._wake.set()
        await self._publish(self._notice(pair, exc.code, count=1, aggregated=False))

    async def flush(self, *, everything: bool = False) -> None:
        """Close the windows that are over (all of them with ``everything``)."""
        now = time.monotonic()
        for pair, window in list(self._windows.items()):
            if everything or now - window.opened >= self.window_s:
                del self._windows[pair]
                if window.counted:
                    await self._publish(self._notice(pair, window.code, count=window.counted, aggregated=True))

    def _notice(self, pair: tuple[str, str], code: str, *, count: int, aggregated: bool) -> AuditNotice:
        via, message = pair
        detail: dict[str, object] = {"message": message, "via": via, "count": count}
        if aggregated:
            detail.update(aggregated=True, window_s=self.window_s)
        return AuditNotice(kind="auth_failure", actor="anonymous", code=code, detail=detail)

    async def _flush_loop(self) -> None:
        while True:
            if not self._windows:
                self._wake.clear()
                await self._wake.wait()
                continue
            oldest = min(w.opened for w in self._windows.values())
            await asyncio.sleep(max(0.0, oldest + self.window_s - time.monotonic()))
            try:
                await self.flush()
            except Exception:  # publishing is best effort; the next window tries again
                logger.exception("auth failure audit flush failed")
