"""Fixtures for the profiles tests: a Store on the session's real nats-server (fresh buckets per
test) and an injectable clock."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from bus import Bus
from profiles import Profile, Store, profile_from_mapping


class Clock:
    """A settable UTC clock passed to ``Store(now=...)``."""

    def __init__(self, start: datetime) -> None:
        self.current = start

    def __call__(self) -> datetime:
        return self.current

    def advance(self, seconds: float) -> None:
        self.current += timedelta(seconds=seconds)


@pytest.fixture
def clock() -> Clock:
    return Clock(datetime(2026, 3, 15, 12, 0, tzinfo=UTC))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "taskbus.db"


@pytest.fixture
async def store(bus: Bus, clock: Clock) -> AsyncIterator[Store]:
    async with Store(bus, now=clock) as s:
        yield s


@pytest.fixture
def make_profile(store: Store):
    """``await make_profile(name, **fields)``: a profile allowing haiku and Read, plus ``fields``."""

    async def make(name: str, **fields: object) -> Profile:
        base: dict[str, object] = {"models": ["claude-haiku-4-5"], "tools": ["Read"]}
        base.update(fields)
        return await store.create_profile(profile_from_mapping(name, base))

    return make
