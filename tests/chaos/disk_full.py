"""Disk nearly full in the data dir: a small tmpfs mounted on it, filled with a ballast
file while the stack runs. New work must be refused with a clear error (not corrupt
the SQLite files, not crash a process); when the ballast goes, work succeeds again and
the audit log catches up with what happened meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from report import Row, measure
from stack import ChaosStack

SIZE = "24m"
CLEAR = ("disk", "space", "full")


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str = SIZE) -> Iterator[Path]:
    path.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], check=True)
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path: Path) -> int:
    """Write a ballast file until the filesystem is full; its size in bytes."""
    chunk = b"\0" * (256 * 1024)
    written = 0
    with (path / "ballast").open("wb") as f:
        try:
            while True:
                f.write(chunk)
                f.flush()
                written += len(chunk)
        except OSError:
            pass
    return written


def integrity(db: Path) -> str:
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return conn.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        conn.close()


async def _try(client: Any, tool: str, args: dict[str, Any]) -> tuple[bool, str]:
    try:
        result = await client.call_tool(tool, args)
    except Exception as exc:  # noqa: BLE001 (any failure is counted, never raised)
        return False, f"{type(exc).__name__}: {exc}"
    text = "\n".join(getattr(c, "text", "") for c in result.content)
    return not result.is_error, text


async def disk_full_scenario(work: Path, scale: Any) -> Row:
    from scenarios import audit_verify

    started = time.monotonic()
    row = Row("disk full (data dir)")
    calls = [
        ("complete", {"prompt": "while full", "model": "claude-haiku-4-5"}),
        ("run_task", {"description": "[script:hello] say hello", "timeout_s": 120}),
    ]
    with small_tmpfs(work / "data") as data:
        async with ChaosStack(work, runners={"r-bwrap-1": "bwrap"}, slots=1, data_dir=data) as stack:
            async with stack.client() as client:
                for tool, args in calls:
                    ok, text = await _try(client, tool, args)
                    if not ok:
                        row.notes.append(f"before filling, {tool} failed: {text[:200]}")
                        row.lost_jobs += 1
                ballast = await asyncio.to_thread(fill, data)
                row.notes.append(f"ballast {ballast // 1024} KiB filled the {SIZE} data dir")
                for tool, args in calls * 2:
                    ok, text = await _try(client, tool, args)
                    if ok:
                        row.notes.append(f"{tool} succeeded on a full disk")
                    elif any(word in text.lower() for word in CLEAR) and "Traceback" not in text:
                        row.rejected += 1
                    else:
                        row.unclear += 1
                    row.notes.append(f"full: {tool} -> {'ok' if ok else text[:160]!r}")
                row.crashed += [n for n, alive in stack.alive().items() if not alive]
                os.unlink(data / "ballast")
                for tool, args in calls:
                    ok, text = await _try(client, tool, args)
                    if not ok:
                        row.notes.append(f"after space returned, {tool} failed: {text[:200]}")
                        row.lost_jobs += 1
            row = await measure(stack, row, settle_timeout=60)
            for name in ("audit.db",):  # the control plane is in NATS now
                result = integrity(data / name)
                if result != "ok":
                    row.notes.append(f"{name} integrity: {result}")
                    row.state_changes += 1
            verdict = audit_verify(stack)
            if not verdict.get("ok"):
                row.notes.append(f"audit verify: {verdict}")
                row.state_changes += 1
            row.crashed += [n for n, alive in stack.alive().items() if not alive]
    row.duration_s = round(time.monotonic() - started, 1)
    return row
