"""Alerts: critical security events and bursts of auth failures, republished on
``<prefix>.alerts.<kind>`` as JSON, plus an optional command hook (``alert_command``).

The hook runs in its own task with a bounded queue: a slow or failing command is
logged and never holds up ingest (a full queue drops the hook run, not the alert on
the bus).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections import deque
from datetime import UTC, datetime
from typing import Any

import msgspec
from nats.aio.client import Client as NatsClient

from bus import SubjectError, Subjects, redact

from ._writer import Notable

logger = logging.getLogger(__name__)

CRITICAL_KINDS = frozenset({"forged_policy", "bad_signature", "blocked_command", "escape_attempt"})
CRITICAL_NOTICES = frozenset({"replayed_job"})
"""Audit notices that are security events by themselves (a runner refused a replayed job)."""
AUTH_FAILURE = "auth_failure"
_encode = msgspec.json.Encoder().encode


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1_000_000, UTC).isoformat()


class AlertRules:
    """Decides which stored rows become alerts (no I/O; tested on its own)."""

    def __init__(self, *, auth_threshold: int = 5, auth_window_s: float = 60.0) -> None:
        self.auth_threshold = auth_threshold
        self.auth_window_us = int(auth_window_s * 1_000_000)
        self._failures: dict[str, deque[int]] = {}

    def evaluate(self, notable: list[Notable]) -> list[dict[str, Any]]:
        alerts: list[dict[str, Any]] = []
        for n in notable:
            if n.type == "security" and (n.kind in CRITICAL_KINDS or n.severity == "critical"):
                alerts.append(self._alert(n.kind or "security", n, n.severity or "critical", n.detail))
            if n.type == "notice" and n.kind in CRITICAL_NOTICES:
                alerts.append(self._alert(n.kind, n, "critical", n.detail))
            if n.kind == AUTH_FAILURE and n.type in ("notice", "security"):
                actor = n.key_id or "unknown"
                window = self._failures.setdefault(actor, deque())
                window.extend([n.ts_us] * min(n.count, self.auth_threshold))  # an aggregated row counts each failure
                while window and window[0] < n.ts_us - self.auth_window_us:
                    window.popleft()
                if len(window) >= self.auth_threshold:
                    detail = f"{len(window)} auth failures for {actor} within {self.auth_window_us // 1_000_000}s"
                    alerts.append(self._alert("auth_failures", n, "critical", detail))
                    window.clear()
            if len(self._failures) > 10_000:
                self._failures.clear()
        return alerts

    @staticmethod
    def _alert(kind: str, n: Notable, severity: str, detail: str | None) -> dict[str, Any]:
        return {
            "kind": kind,
            "severity": severity,
            "row": n.row,
            "type": n.type,
            "task_id": n.task_id,
            "key_id": n.key_id,
            "detail": redact(detail or ""),
            "ts": _iso(n.ts_us),
        }


class Alerter:
    """Publishes alerts and feeds the command hook. ``run()`` runs the hook worker."""

    def __init__(
        self,
        nc: NatsClient,
        subjects: Subjects,
        *,
        command: str = "",
        rules: AlertRules | None = None,
        hook_timeout_s: float = 10.0,
        queue_size: int = 100,
    ) -> None:
        self.nc = nc
        self.subjects = subjects
        self.command = command
        self.rules = rules or AlertRules()
        self.hook_timeout_s = hook_timeout_s
        self._queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=queue_size)
        self.published = 0

    async def handle(self, notable: list[Notable]) -> None:
        if not notable:
            return
        for alert in self.rules.evaluate(notable):
            try:
                subject = self.subjects.alerts(alert["kind"])
            except SubjectError:
                subject = self.subjects.alerts("security")
            payload = _encode(alert)
            try:
                await self.nc.publish(subject, payload)
                self.published += 1
            except Exception as exc:  # the alert is still in the audit log; ingest goes on
                logger.warning("cannot publish alert %s on %s: %s", alert["kind"], subject, exc)
            logger.warning("alert %s: row %d task %s key %s", alert["kind"], alert["row"], alert["task_id"], alert["key_id"])
            if self.command:
                try:
                    self._queue.put_nowait(payload)
                except asyncio.QueueFull:
                    logger.warning("alert hook queue full; not running the hook for row %d", alert["row"])

    def close(self) -> None:
        """Let the hook worker finish what is queued, then stop (drops the oldest if full)."""
        while True:
            try:
                self._queue.put_nowait(None)
                return
            except asyncio.QueueFull:
                self._queue.get_nowait()
                logger.warning("alert hook queue full at shutdown; dropped one hook run")

    async def run(self) -> None:
        while (payload := await self._queue.get()) is not None:
            await self._run_hook(payload)

    async def _run_hook(self, payload: bytes) -> None:
        try:
            proc = await asyncio.create_subprocess_shell(
                self.command,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE,
                start_new_session=True,
            )
        except OSError as exc:
            logger.warning("alert hook could not start: %s", exc)
            return
        try:
            async with asyncio.timeout(self.hook_timeout_s):
                _, stderr = await proc.communicate(payload)
        except TimeoutError:
            logger.warning("alert hook ran past %.0fs; killed", self.hook_timeout_s)
            _kill_group(proc.pid)
            await proc.wait()
            return
        if proc.returncode != 0:
            lines = (stderr or b"").decode("utf-8", "replace").strip().splitlines()
            first = redact(lines[0]) if lines else ""
            logger.warning("alert hook exited %s: %s", proc.returncode, first[:200])


def _kill_group(pid: int) -> None:
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
