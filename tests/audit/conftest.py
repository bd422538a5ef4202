"""Fixtures of the audit tests (helpers live in audit_helpers.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from audit_helpers import RunningWriter

from audit import AuditOptions
from bus import Bus, Settings


@pytest.fixture
def db(settings: Settings) -> Path:
    return settings.data_path / "audit.db"


@pytest.fixture
async def writer(settings: Settings, db: Path, bus: Bus) -> AsyncIterator[RunningWriter]:
    w = RunningWriter(settings, db, AuditOptions(fetch_wait_s=0.2, head_interval_s=1.0))
    await w.start()
    try:
        yield w
    finally:
        await w.close()
