"""Fixtures for ``taskbus up``: its own data dir (sharing the built sandbox image), free ports,
and a helper that starts ``taskbus up`` as a child process and stops it with SIGINT."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from ci_guard import require
from up_kit import ROOT, TASKBUS, Up

from bus import Settings, free_port
from bus._tied import spawn_tied


@pytest.fixture
def up_env(tmp_path: Path, require_bwrap: None, require_claude: Path) -> dict[str, str]:
    """Environment for a `taskbus up` of its own: data dir, free MCP port, offline model."""
    images = Settings.load({}).image_cache_path / "images"
    if not images.is_dir():
        require(False, "the sandbox image", "run `taskbus sandbox build-image`; scripts/setup does")
    data = tmp_path / "data"
    data.mkdir()
    (data / "images").symlink_to(images)
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBUS_") and k != "ANTHROPIC_API_KEY"}
    env.update({"TASKBUS_DATA_DIR": str(data), "TASKBUS_HTTP_PORT": str(free_port()), "TASKBUS_CLAUDE_PATH": str(require_claude)})
    if "TASKBUS_TEST_ROOT" in os.environ:
        env["TASKBUS_TEST_ROOT"] = os.environ["TASKBUS_TEST_ROOT"]
    return env


@pytest.fixture
def start_up(up_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., Up]]:
    """Start `taskbus up` (no terminal: log lines, no panel); always stopped at the end."""
    started: list[Up] = []

    def start(*args: str, env: dict[str, str] | None = None) -> Up:
        log = tmp_path / f"up-{len(started)}.log"
        with log.open("wb") as fh:
            proc = spawn_tied(
                [TASKBUS, "up", "--nats-port", "0", *args],
                env={**up_env, **(env or {})},
                cwd=ROOT,
                stdin=subprocess.DEVNULL,
                stdout=fh,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        up = Up(proc=proc, data=Path(up_env["TASKBUS_DATA_DIR"]), log=log)
        started.append(up)
        return up

    yield start
    for up in started:
        if up.proc.poll() is None:
            up.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                up.proc.wait(timeout=60)
        if up.proc.poll() is None:
            os.killpg(up.proc.pid, signal.SIGKILL)
            up.proc.wait()
