"""Helpers shared by the sandbox tests (a module of its own: ``conftest`` names clash)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from pathlib import Path

from bus import Policy, Settings
from sandbox._sandboxes import Sandbox

ROOT = Path(__file__).resolve().parents[2]


def image_settings() -> Settings:
    """Settings of the data dir ``scripts/setup`` built the image into (TASKBUS_DATA_DIR
    when set, else the default), so the session reuses that image."""
    keep = ("TASKBUS_DATA_DIR", "XDG_DATA_HOME")
    return Settings.load({k: v for k, v in os.environ.items() if k in keep})


def make_policy(**limits: object) -> Policy:
    base: dict[str, object] = {"cpus": 1.0, "memory_mb": 256, "pids": 64, "disk_mb": 32, "timeout_s": 60}
    base.update(limits)
    return Policy(task_id="t" + os.urandom(4).hex(), kind="task", key_id="tb_test", profile="test", model="m", models=["m"], **base)  # type: ignore[arg-type]


async def assert_nothing_left(sb: Sandbox, *, timeout: float = 10.0) -> None:
    """After destroy: no process, container, cgroup, state or pool folder remains."""
    deadline = time.monotonic() + timeout
    while True:
        left = await asyncio.to_thread(leftovers, sb)
        if not left or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    assert not left, f"sandbox {sb.id} left {left}"


def leftovers(sb: Sandbox) -> list[str]:
    left: list[str] = []
    if sb.backend == "bwrap":
        folder = sb._folder  # type: ignore[attr-defined]
        if folder.exists():
            left.append(f"state folder {folder}")
        for path in sb._cgroups.paths:  # type: ignore[attr-defined]
            if path.exists():
                left.append(f"cgroup {path}")
        pid = sb._proc.pid  # type: ignore[attr-defined]
        if Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text().lower():
            left.append(f"bwrap process {pid}")
        agent = sb.agent_pid  # type: ignore[attr-defined]
        if agent and Path(f"/proc/{agent}").exists():
            left.append(f"sandbox process {agent}")
        mounts = Path("/proc/self/mountinfo").read_text()
        if sb.id in mounts:
            left.append("a mount")
    else:
        import docker.errors

        import docker

        client = docker.from_env()
        try:
            client.containers.get(sb.container_id)  # type: ignore[attr-defined]
            left.append(f"container {sb.container_id[:12]}")  # type: ignore[attr-defined]
        except docker.errors.NotFound:
            pass
        finally:
            client.close()
        folder = sb._folder  # type: ignore[attr-defined]  (agent socket; the pool slot when pooled)
        if folder.exists():
            left.append(f"host folder {folder}")
    return left


def host_responsive(limit_s: float = 3.0) -> float:
    """How long the host takes to start a process (asserted small after each bomb)."""
    started = time.monotonic()
    subprocess.run(["true"], check=True, timeout=limit_s)
    return time.monotonic() - started
