"""A cancel must land even when one ``Task.cancel()`` is lost.

On Python 3.11 ``asyncio.wait_for`` (which nats-py uses for every request, so for every
event the runner publishes) returns the inner result and drops a cancellation that races
a completing future. The fresh-clone CI run saw a runaway task keep calling the model for
30 s after its cancel. The handler therefore cancels again while the task still runs.
"""

from __future__ import annotations

import asyncio

import pytest

from bus import Bus
from sandbox._runner import _job
from sandbox._runner._job import JobHandler


async def _swallows_one_cancel(state: dict[str, int]) -> None:
    """Stands for a task whose first cancellation is lost inside a library call."""
    while True:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            state["cancels"] += 1
            if state["cancels"] == 1:
                asyncio.current_task().uncancel()  # what the lost cancel leaves behind: nothing
                continue
            raise


async def test_a_cancel_that_the_task_loses_once_is_asserted_again_until_it_ends(bus: Bus, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_job, "RECANCEL_AFTER_S", 0.2)
    handler = JobHandler(bus, secret="s", runner_id="r-cancel", max_bytes=1 << 20, ack_wait_s=30)
    state = {"cancels": 0}
    work = asyncio.create_task(_swallows_one_cancel(state))
    handler.running["t_lost"] = work
    await asyncio.sleep(0)
    assert handler.cancel("t_lost", "cancelled_by_caller")
    with pytest.raises(asyncio.CancelledError):
        async with asyncio.timeout(10):
            await work
    assert state["cancels"] == 2 and handler.cancel_reasons["t_lost"] == "cancelled_by_caller"


async def test_a_task_that_ends_on_its_first_cancel_is_not_cancelled_again(
    bus: Bus, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_job, "RECANCEL_AFTER_S", 0.05)
    handler = JobHandler(bus, secret="s", runner_id="r-cancel", max_bytes=1 << 20, ack_wait_s=30)
    rechecked = asyncio.Event()
    recancel = handler._recancel

    def recheck(task_id: str, work: asyncio.Task[None]) -> None:  # the handler's own re-check, seen to run
        recancel(task_id, work)
        rechecked.set()

    monkeypatch.setattr(handler, "_recancel", recheck)
    work = asyncio.create_task(asyncio.sleep(3600))
    handler.running["t_once"] = work
    await asyncio.sleep(0)
    handler.cancel("t_once", "cancelled_by_caller")
    with pytest.raises(asyncio.CancelledError):
        await work
    async with asyncio.timeout(10):  # wait for the re-check itself, not for a fixed time
        await rechecked.wait()
    assert work.cancelled()
    assert "cancelling again" not in caplog.text, "a task that already ended was cancelled again"
