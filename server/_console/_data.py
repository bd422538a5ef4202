"""What the console reads besides the dispatcher: runner heartbeats and alerts (core NATS,
kept in memory from the first page view on) and the audit SQLite (read-only, off the loop)."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections import deque
from pathlib import Path
from typing import Any

from audit import default_db_path, open_db, parse_time, search, verify
from bus import Bus, Heartbeat, decode_heartbeat

logger = logging.getLogger(__name__)

MAX_ALERTS = 100
AUDIT_TIMEOUT_S = 30.0


class LiveBoard:
    """Latest heartbeat per runner and the latest alerts, from subscriptions made once."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.runners: dict[str, tuple[Heartbeat, float]] = {}
        self.alerts: deque[tuple[float, str, str]] = deque(maxlen=MAX_ALERTS)
        self._started = False
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        async with self._lock:
            if self._started:
                return
            await self.bus.nc.subscribe(self.bus.subjects.runners_all(), cb=self._on_heartbeat)
            await self.bus.nc.subscribe(f"{self.bus.subjects.prefix}.alerts.*", cb=self._on_alert)
            self._started = True

    async def _on_heartbeat(self, msg: Any) -> None:
        try:
            beat = decode_heartbeat(msg.data)
        except Exception:
            return
        self.runners[beat.runner_id] = (beat, time.time())

    async def _on_alert(self, msg: Any) -> None:
        text = msg.data[:4096].decode("utf-8", "replace")
        try:
            text = json.dumps(json.loads(text), indent=1)[:4096]
        except ValueError:
            pass
        self.alerts.appendleft((time.time(), msg.subject.rsplit(".", 1)[-1], text))


def audit_path(data_path: Path) -> Path:
    return default_db_path(data_path)


def _with_db(path: Path, work: Any) -> Any:
    conn = open_db(path, readonly=True)
    try:
        return work(conn)
    finally:
        conn.close()


async def audit_search(
    path: Path, *, text: str = "", type_: str = "", key: str = "", task: str = "", since: str = "", limit: int = 200
) -> list[dict[str, Any]]:
    def work(conn: sqlite3.Connection) -> list[dict[str, Any]]:
        return search(
            conn,
            limit=limit,
            newest=True,
            types=(type_,) if type_ else (),
            key=key or None,
            task=task or None,
            text=text or None,
            since_us=parse_time(since) if since else None,
        )

    async with asyncio.timeout(AUDIT_TIMEOUT_S):
        return await asyncio.to_thread(_with_db, path, work)


async def audit_head(path: Path) -> tuple[int, str] | None:
    def work(conn: sqlite3.Connection) -> tuple[int, str] | None:
        row = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        return None if row is None else (int(row[0]), bytes(row[1]).hex())

    async with asyncio.timeout(AUDIT_TIMEOUT_S):
        return await asyncio.to_thread(_with_db, path, work)


async def audit_verify(path: Path) -> Any:
    async with asyncio.timeout(AUDIT_TIMEOUT_S * 4):
        return await asyncio.to_thread(_with_db, path, verify)
