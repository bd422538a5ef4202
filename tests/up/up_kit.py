"""Helpers for the `taskbus up` tests (imported by name: module names are unique across the suite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
TASKBUS = str(Path(sys.executable).parent / "taskbus")


def wait_for(what: str, predicate: Callable[[], Any], timeout: float = 60.0, *, log: Path | None = None) -> Any:
    """Poll ``predicate`` until it returns something truthy, or fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}\n{tail}")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


@dataclass
class Up:
    proc: subprocess.Popen[bytes]
    data: Path
    log: Path

    def state(self) -> dict[str, Any] | None:
        try:
            return json.loads((self.data / "up.json").read_text())
        except (OSError, ValueError):
            return None

    def ready_state(self) -> dict[str, Any]:
        def ready() -> dict[str, Any] | None:
            assert self.proc.poll() is None, f"taskbus up exited early:\n{self.log.read_text()[-3000:]}"
            state = self.state()
            return state if state and state.get("ready") else None

        return wait_for("taskbus up to be ready", ready, 90, log=self.log)

    def child(self, name: str) -> dict[str, Any]:
        state = self.state() or {"children": []}
        return next(c for c in state["children"] if c["name"] == name)
