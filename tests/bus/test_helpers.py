"""The small shared helpers in bus/: one duration grammar, one exception-group unwrapper,
one version, and a backoff wait a stop event cuts short."""

from __future__ import annotations

import asyncio

import pytest

from bus import Backoff, InvalidInput, first_error, is_duration, parse_duration, taskbus_version


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("90s", 90), ("15m", 900), ("1h", 3600), ("1.5h", 5400), ("30d", 2_592_000), ("2w", 1_209_600), (" 30D ", 2_592_000), ("10 m", 600)],
)
def test_durations_people_type_are_read_one_way_everywhere(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds
    assert is_duration(text)


@pytest.mark.parametrize("text", ["", "30", "d", "-1h", "1h30m", "2026-01-01", "1y", "1e3s"])
def test_anything_else_is_refused_with_the_accepted_form(text: str) -> None:
    assert not is_duration(text)
    with pytest.raises(InvalidInput, match="90s, 15m, 1h, 30d, 2w"):
        parse_duration(text)


def test_the_first_real_error_is_found_inside_nested_groups_past_cancellations() -> None:
    error = KeyError("x")
    group = BaseExceptionGroup("outer", [asyncio.CancelledError(), ExceptionGroup("inner", [error, ValueError()])])
    assert first_error(group) is error
    assert first_error(error) is error
    only_cancelled = BaseExceptionGroup("c", [asyncio.CancelledError()])
    assert isinstance(first_error(only_cancelled), asyncio.CancelledError)


async def test_a_task_group_failure_unwraps_to_the_error_raised_inside() -> None:
    async def fails() -> None:
        raise InvalidInput("bad input")

    with pytest.raises(BaseExceptionGroup) as caught:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(fails())
            tg.create_task(asyncio.sleep(60))  # cancelled by the failure
    assert isinstance(first_error(caught.value), InvalidInput)


def test_the_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version

    assert taskbus_version() == version("taskbus")


async def test_a_backoff_wait_ends_when_the_stop_event_is_set() -> None:
    stop = asyncio.Event()
    backoff = Backoff(600, 600, jitter=0)
    waiting = asyncio.create_task(backoff.sleep(until=stop))
    await asyncio.sleep(0)
    assert not waiting.done()
    stop.set()
    async with asyncio.timeout(30):  # far below the 600 s it would otherwise wait
        assert await waiting == 600
