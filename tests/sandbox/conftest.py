"""Sandbox fixtures: the image built once per session (reusing the default data dir's
cache that ``scripts/setup`` fills), per-test data dirs, and a backend per test."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from bus import Policy, Settings
from sandbox._sandboxes import (
    Sandbox,
    SandboxBackend,
    build_image,
    get_backend,
    spec_from_policy,
)
from sandbox._sandboxes._image import image_folder

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).parent))


def image_settings() -> Settings:
    """Settings of the data dir ``scripts/setup`` built the image into (TASKBUS_DATA_DIR
    when set, else the default), so the session reuses that image."""
    keep = ("TASKBUS_DATA_DIR", "XDG_DATA_HOME")
    return Settings.load({k: v for k, v in os.environ.items() if k in keep})


@pytest.fixture(scope="session")
def image_cache() -> Path:
    """The images folder of that data dir, built there if missing (once per session)."""
    settings = image_settings()
    build_image(settings, docker=_docker_up())
    return image_folder(settings).parent


def _docker_up() -> bool:
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@pytest.fixture
def sandbox_settings(tmp_path: Path, image_cache: Path) -> Settings:
    """Settings with a data dir of this test's own whose images/ is the shared cache."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "images").symlink_to(image_cache)
    return Settings.load({}, data_dir=str(data))


@pytest.fixture(params=["bwrap", "docker"])
def backend_name(request: pytest.FixtureRequest) -> str:
    request.getfixturevalue(f"require_{request.param}")
    return request.param


@pytest.fixture
async def backend(backend_name: str, sandbox_settings: Settings) -> AsyncIterator[SandboxBackend]:
    b = get_backend(backend_name, sandbox_settings)
    try:
        yield b
    finally:
        await b.close()


def make_policy(**limits: object) -> Policy:
    base: dict[str, object] = {"cpus": 1.0, "memory_mb": 256, "pids": 64, "disk_mb": 32, "timeout_s": 60}
    base.update(limits)
    return Policy(task_id="t" + os.urandom(4).hex(), kind="task", key_id="tb_test", profile="test", model="m", models=["m"], **base)  # type: ignore[arg-type]


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    ws = tmp_path / "workspace"
    ws.mkdir()
    return ws


@pytest.fixture
async def new_sandbox(backend: SandboxBackend, workspace: Path):  # type: ignore[no-untyped-def]
    """Factory: ``await new_sandbox(**policy_limits)``. Every sandbox it made is destroyed
    at the end of the test and checked to leave nothing behind."""
    made: list[Sandbox] = []

    async def make(*, ro_mounts=(), socket_dir=None, home_files=None, env=None, ws: Path | None = None, **limits):  # type: ignore[no-untyped-def]
        spec = spec_from_policy(
            make_policy(**limits),
            runner_id="test-runner",
            workspace=str(ws or workspace),
            ro_mounts=ro_mounts,
            socket_dir=socket_dir,
            home_files=home_files,
            env=env,
        )
        sb = await backend.create(spec)
        made.append(sb)
        return sb

    yield make
    for sb in made:
        await sb.destroy()
        await sb.destroy()  # idempotent
        await assert_nothing_left(sb)


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
        target = sb._target  # type: ignore[attr-defined]
        if Path(f"/proc/{target}").exists():
            left.append(f"sandbox process {target}")
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
