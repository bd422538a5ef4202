"""One retry policy for the whole project: exponential backoff with full jitter.

Every loop that waits before trying again (a JetStream publish, a KV compare-and-set,
a per-task event follower after a NATS outage, a busy SQLite writer, a crashed child of
``taskbus up``) takes its delays from a :class:`Backoff`, so that many processes retrying
after one shared failure spread out instead of retrying in lockstep.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")


class Backoff:
    """Delays ``initial * factor**n`` capped at ``maximum``, each drawn uniformly from
    ``[delay * (1 - jitter), delay]`` ("full jitter" when ``jitter`` is 1)."""

    def __init__(self, initial: float = 0.1, maximum: float = 5.0, *, factor: float = 2.0, jitter: float = 1.0) -> None:
        if initial <= 0 or maximum < initial or factor < 1 or not 0 <= jitter <= 1:
            raise ValueError("Backoff needs 0 < initial <= maximum, factor >= 1 and 0 <= jitter <= 1")
        self.initial = initial
        self.maximum = maximum
        self.factor = factor
        self.jitter = jitter
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next attempt; counts one more failure."""
        ceiling = min(self.maximum, self.initial * self.factor ** min(self.failures, 64))
        self.failures += 1
        return ceiling * (1 - self.jitter * random.random())

    async def sleep(self, *, until: asyncio.Event | None = None) -> float:
        """Wait the next delay (returned); return early once ``until`` is set (a stop event)."""
        delay = self.next_delay()
        if until is None:
            await asyncio.sleep(delay)
        elif not until.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await until.wait()
        return delay

    def reset(self) -> None:
        """Back to the first delay (after a success, or once healthy for a while)."""
        self.failures = 0


async def retry_async(
    call: Callable[[], Awaitable[T]],
    *,
    on: type[BaseException] | tuple[type[BaseException], ...],
    attempts: int,
    backoff: Backoff | None = None,
    on_retry: Callable[[BaseException, int, float], None] | None = None,
    patience_s: float = 0.0,
) -> T:
    """Await ``call()`` up to ``attempts`` times while it raises one of ``on``, and beyond that
    until ``patience_s`` seconds have passed since the first try (a replicated stream electing
    a leader); the last failure propagates. ``on_retry(exc, attempt, delay)`` runs before each
    wait (logging). Cancellation is never retried."""
    if attempts < 1:
        raise ValueError("attempts must be at least 1")
    wait = backoff or Backoff()
    deadline = time.monotonic() + patience_s
    attempt = 0
    while True:
        attempt += 1
        try:
            return await call()
        except asyncio.CancelledError:
            raise
        except on as exc:
            if attempt >= attempts and time.monotonic() >= deadline:
                raise
            delay = wait.next_delay()
            if on_retry is not None:
                on_retry(exc, attempt, delay)
            await asyncio.sleep(delay)
