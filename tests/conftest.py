"""Shared fixtures: a real nats-server per test session, fresh subjects per test,
and ``require()`` which skips locally but FAILS under CI=true when a component is missing."""

from __future__ import annotations

import shutil
import subprocess
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from ci_guard import require
from mount_guard import detach_all_under, sweep_dead_sessions

from bus import Bus, EmbeddedNats, Settings, Subjects

ROOT = Path(__file__).resolve().parents[1]


def docker_available() -> bool:
    if not shutil.which("docker"):
        return False
    return subprocess.run(["docker", "info"], capture_output=True).returncode == 0


def bwrap_available() -> bool:
    return shutil.which("bwrap") is not None


def claude_path() -> Path | None:
    path = ROOT / ".tools" / "claude" / "node_modules" / ".bin" / "claude"
    return path.resolve() if path.exists() else None


@pytest.fixture
def require_docker() -> None:
    require(docker_available(), "Docker Engine", "scripts/setup system dockerd")


@pytest.fixture
def require_bwrap() -> None:
    require(bwrap_available(), "bubblewrap", "scripts/setup system")


@pytest.fixture
def require_claude() -> Path:
    path = claude_path()
    require(path is not None, "Claude Code CLI", "scripts/setup claude")
    assert path is not None
    return path


@pytest.fixture(scope="session", autouse=True)
def _unmount_what_dead_sessions_left(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Workspace mounts a killed (or older) test session left under pytest's temp root
    are detached, so that pytest can remove those folders (else it warns "Device or
    resource busy" in every later session) and their loop devices are freed."""
    base = tmp_path_factory.getbasetemp()
    swept = sweep_dead_sessions(base.parent, base) if base.parent.name.startswith("pytest-of-") else []
    if swept:
        warnings.warn(f"unmounted {len(swept)} mount(s) left by an earlier test session: {', '.join(map(str, swept))}", stacklevel=1)


@pytest.fixture(autouse=True)
def _no_mount_left_under_tmp_path(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a test that used ``tmp_path``: detach any mount still under it (a workspace the
    test or the runner left) and say which test left it."""
    folder: Path | None = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    if folder is not None:
        left = detach_all_under(folder)
        if left:
            warnings.warn(f"{request.node.nodeid} left mounted: {', '.join(map(str, left))}", stacklevel=1)


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path_factory.mktemp("nats"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(nats_server: EmbeddedNats) -> str:
    return nats_server.url


@pytest.fixture
def subjects() -> Subjects:
    """A fresh subject prefix (and so fresh streams) for each test."""
    return Subjects("t" + uuid.uuid4().hex[:10])


@pytest.fixture
async def bus(nats_url: str, subjects: Subjects) -> AsyncIterator[Bus]:
    b = await Bus.open(nats_url, subjects, name="pytest")
    await b.ensure_streams()
    try:
        yield b
    finally:
        await b.close()


@pytest.fixture
def settings(tmp_path: Path, nats_url: str, subjects: Subjects) -> Settings:
    """Settings for one test: its own data dir, the session's NATS, its own prefix."""
    return Settings.load(
        {},
        data_dir=str(tmp_path / "data"),
        nats_url=nats_url,
        subject_prefix=subjects.prefix,
        job_secret="test-secret-" + uuid.uuid4().hex,
        # JetStream reserves a bucket's max_bytes up front; every test has its own bucket
        artifacts_store_max_bytes=64 * 1024 * 1024,
    )
