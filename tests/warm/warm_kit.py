"""Helpers for warm-agent tests: a runner with warm agents on, waiting for them, reading
what the scripted model was sent."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import msgspec

from bus import Event, Log, Settings, Started
from sandbox import Runner


def warm_settings(settings: Settings, **extra: Any) -> Settings:
    return msgspec.structs.replace(settings, warm_agents_per_class=1, warm_agents_total=2, heartbeat_s=0.5, **extra)


async def wait_warm(runner: Runner, classes: int, *, timeout: float = 120) -> dict[str, int]:
    """Poll until the runner holds an idle warm agent for ``classes`` classes."""
    assert runner.warm is not None
    async with asyncio.timeout(timeout):
        while len(runner.warm.counts()) < classes:
            await asyncio.sleep(0.1)
    return runner.warm.counts()


def model_requests(log: Path) -> list[dict[str, Any]]:
    """The scripted model's /v1/messages requests so far."""
    if not log.exists():
        return []
    rows = [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return [r for r in rows if r.get("path") == "/v1/messages"]


def started(events: list[Event]) -> Started:
    return next(e for e in events if isinstance(e, Started))


def init_line(events: list[Event]) -> str:
    """The runner's log line for Claude Code's init event (model and tools it reports)."""
    return next(e.line for e in events if isinstance(e, Log) and e.line.startswith("claude ") and " started: model " in e.line)
