"""Load shapes shared by the benchmarks."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


async def closed_loop(n: int, concurrency: int, call: Callable[[], Awaitable[object]]) -> tuple[list[float], float]:
    """``n`` calls by ``concurrency`` workers, each starting its next call when its last one
    returned; the latency of every call (s) and the wall time of all (s)."""
    samples: list[float] = []
    queue = iter(range(n))

    async def worker() -> None:
        for _ in queue:
            t = time.perf_counter()
            await call()
            samples.append(time.perf_counter() - t)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return samples, time.perf_counter() - started
