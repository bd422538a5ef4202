"""Sandbox fixtures: the image built once per session (reusing the default data dir's
cache that ``scripts/setup`` fills), per-test data dirs, and a backend per test."""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sandbox_helpers import assert_nothing_left, image_settings, make_policy

from bus import Settings
from sandbox._sandboxes import (
    Sandbox,
    SandboxBackend,
    build_image,
    get_backend,
    spec_from_policy,
)
from sandbox._sandboxes._image import image_folder


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
