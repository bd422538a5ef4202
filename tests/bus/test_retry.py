"""The one retry policy: jittered exponential delays, bounded attempts (and patience), no retried cancel."""

from __future__ import annotations

import asyncio

import pytest

from bus import Backoff, retry_async


def test_delays_grow_to_the_cap_and_are_jittered() -> None:
    backoff = Backoff(0.1, 1.0)
    ceilings = [0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    delays = [backoff.next_delay() for _ in ceilings]
    assert all(0 <= d <= c for d, c in zip(delays, ceilings, strict=True))
    many = {round(Backoff(0.1, 1.0).next_delay(), 6) for _ in range(50)}
    assert len(many) > 10  # lockstep retries are what jitter exists to prevent
    backoff.reset()
    assert backoff.next_delay() <= 0.1


def test_no_jitter_gives_the_ceiling() -> None:
    backoff = Backoff(0.5, 2.0, jitter=0)
    assert [backoff.next_delay() for _ in range(4)] == [0.5, 1.0, 2.0, 2.0]


@pytest.mark.parametrize("kwargs", [{"initial": 0}, {"initial": 2, "maximum": 1}, {"jitter": 1.5}, {"factor": 0.5}])
def test_nonsense_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        Backoff(**kwargs)


async def test_retries_until_success_then_gives_up() -> None:
    calls: list[int] = []
    seen: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionError("down")
        return "ok"

    result = await retry_async(
        flaky, on=ConnectionError, attempts=5, backoff=Backoff(0.001, 0.002), on_retry=lambda exc, attempt, delay: seen.append(attempt)
    )
    assert result == "ok" and len(calls) == 3 and seen == [1, 2]

    async def down() -> str:
        raise ConnectionError("still down")

    with pytest.raises(ConnectionError, match="still down"):
        await retry_async(down, on=ConnectionError, attempts=2, backoff=Backoff(0.001, 0.002))

    async def wrong() -> str:
        raise KeyError("not retried")

    with pytest.raises(KeyError):
        await retry_async(wrong, on=ConnectionError, attempts=5)


async def test_cancellation_is_not_retried() -> None:
    started = asyncio.Event()

    async def slow() -> None:
        started.set()
        await asyncio.sleep(30)

    task = asyncio.create_task(retry_async(slow, on=Exception, attempts=5))
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_patience_keeps_trying_past_the_attempts_until_its_deadline() -> None:
    """A replicated stream electing a leader: one attempt, but tried again for ``patience_s``."""
    loop = asyncio.get_running_loop()
    back_at = loop.time() + 0.3

    async def electing() -> str:
        if loop.time() < back_at:
            raise ConnectionError("no leader yet")
        return "ok"

    assert await retry_async(electing, on=ConnectionError, attempts=1, backoff=Backoff(0.01, 0.05), patience_s=10) == "ok"

    back_at = loop.time() + 30
    began = loop.time()
    with pytest.raises(ConnectionError, match="no leader yet"):
        await retry_async(electing, on=ConnectionError, attempts=1, backoff=Backoff(0.01, 0.05), patience_s=0.2)
    assert loop.time() - began < 5  # gave up at its deadline, not at the leader's return
    with pytest.raises(ConnectionError):
        await retry_async(electing, on=ConnectionError, attempts=1)  # no patience: the one attempt
