"""A sandbox cannot exhaust the host: fork, memory and disk bombs stop at the policy's
limits, a busy loop dies at the wall clock, and the host stays responsive (both backends).
Each sandbox is destroyed afterwards and checked to leave nothing behind (conftest)."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest
from sandbox_helpers import host_responsive

from bus import SandboxTimeout

FORK_BOMB = r"""
import os, time
n = 0
try:
    while n < 2000:
        if os.fork() == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
    print("NOT stopped", n, flush=True)
except OSError as exc:
    print("stopped", n, exc.errno, flush=True)
"""

MEMORY_BOMB = r"""
chunks = []
for i in range(128):
    chunks.append(bytearray(8 * 1024 * 1024))
    print(len(chunks) * 8, flush=True)
print("NOT killed", flush=True)
"""


async def test_fork_bomb_stops_at_the_pids_limit(new_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb = await new_sandbox(pids=48)
    ex = await sb.exec(["python3", "-c", FORK_BOMB])
    async with asyncio.timeout(60):
        async for _, line in ex:
            if line.startswith(("stopped", "NOT")):
                break
    word, count, *_ = line.split()
    assert word == "stopped", line
    assert int(count) < 48
    assert host_responsive() < 3.0


async def test_memory_bomb_is_killed_at_the_memory_limit(new_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb = await new_sandbox(memory_mb=128)
    result = await (await sb.exec(["python3", "-c", MEMORY_BOMB])).collect(timeout=60)
    assert "NOT killed" not in result.stdout
    assert result.exit_code in (-9, 137), result.exit_code
    assert int(result.stdout[-1]) <= 128 + 8
    assert sb.oom_killed
    assert host_responsive() < 3.0


async def test_disk_fill_stops_at_the_tmpfs_and_file_size_limits(new_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb = await new_sandbox(disk_mb=32)
    # many files, each under the file-size limit, until the tmpfs is full
    fill = "for i in $(seq 10); do dd if=/dev/zero of={d}/f$i bs=1M count=8 2>&1 | grep -o 'No space left on device'; done"
    script = (
        f"{fill.format(d='/tmp')} | sort -u; echo tmp=$(du -sm /tmp | cut -f1); "
        f"{fill.format(d='/home/agent')} | sort -u; echo home=$(du -smx /home/agent | cut -f1); "
        "(dd if=/dev/zero of=/workspace/big bs=1M count=100 2>/dev/null); echo workspace_rc=$?"
    )
    result = await (await sb.exec(["bash", "-c", script])).collect(timeout=60)
    facts = dict(line.split("=", 1) for line in result.stdout if "=" in line)
    assert result.stdout.count("No space left on device") == 2, result
    assert int(facts["tmp"]) <= 32 and int(facts["home"]) <= 32
    assert facts["workspace_rc"] != "0"
    assert (sb.workspace / "big").stat().st_size <= 32 * 1024 * 1024
    assert host_responsive() < 3.0


async def test_busy_loop_is_killed_at_the_wall_clock(new_sandbox) -> None:  # type: ignore[no-untyped-def]
    started = time.monotonic()
    sb = await new_sandbox(timeout_s=3)
    ex = await sb.exec(["python3", "-c", "while True: pass"])
    code = await ex.wait(timeout=30)
    elapsed = time.monotonic() - started
    assert code in (-9, 137)
    assert 2.5 <= elapsed < 20
    assert sb.timed_out and ex.timed_out
    with pytest.raises(SandboxTimeout):
        await sb.exec(["true"])
    assert host_responsive() < 3.0


async def test_workspace_files_belong_to_the_sandbox_user_on_the_host(new_sandbox, workspace: Path) -> None:  # type: ignore[no-untyped-def]
    (workspace / "input.txt").write_text("given")
    sb = await new_sandbox()
    result = await (await sb.exec(["bash", "-c", "cat input.txt && echo made > output.txt && echo appended >> input.txt"])).collect(
        timeout=30
    )
    assert result.exit_code == 0 and result.stdout == ["given"]
    assert (sb.workspace / "output.txt").stat().st_uid == 1000
    assert os.stat(sb.workspace / "input.txt").st_uid == 1000
