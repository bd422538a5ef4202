"""`taskbus up` counts a child ready from a probe (its own pid in a ready file), never
from what its log says: a file left by another process does not count, the child's own
file does."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from cli._up import ChildSpec, Supervisor, UpError
from cli._up._readyfile import ready_file_path, ready_pid, write_ready_file
from cli._up._supervisor import ready_file_probe

ENV = {"PATH": "/usr/bin:/bin"}


async def test_a_child_is_ready_once_it_writes_its_own_pid_to_its_ready_file(tmp_path: Path) -> None:
    path = ready_file_path(tmp_path / "data", "worker")
    script = (
        "import sys, time\n"
        "from cli._up._readyfile import write_ready_file\n"
        "print('audit writer started', flush=True)\n"  # log wording alone must not be enough ...
        "time.sleep(0.5)\n"
        "write_ready_file(__import__('pathlib').Path(sys.argv[1]))\n"  # ... the file is
        "time.sleep(600)\n"
    )
    spec = ChildSpec(name="worker", argv=[sys.executable, "-c", script, str(path)], env=ENV, probe=ready_file_probe(path))
    async with Supervisor([spec], log_dir=tmp_path / "logs", start_timeout_s=60) as supervisor:
        child = supervisor.child("worker")
        assert child.state == "ready"
        assert ready_pid(path) == child.pid
    assert oct(path.parent.stat().st_mode & 0o777) == "0o700"


async def test_a_ready_file_holding_another_pid_does_not_make_a_child_ready(tmp_path: Path) -> None:
    path = ready_file_path(tmp_path / "data", "worker")
    write_ready_file(path)  # this test's pid: as if left by an earlier life of the child
    assert ready_pid(path) == os.getpid()
    spec = ChildSpec(name="worker", argv=["sleep", "600"], env=ENV, probe=ready_file_probe(path))
    with pytest.raises(UpError, match="worker was not ready within"):
        async with Supervisor([spec], log_dir=tmp_path / "logs", start_timeout_s=1.5):
            raise AssertionError("a stale ready file made a new child ready")


def test_a_ready_file_that_is_a_link_is_not_followed(tmp_path: Path) -> None:
    target = tmp_path / "elsewhere"
    target.write_text(f"{os.getpid()}\n")
    path = ready_file_path(tmp_path / "data", "worker")
    path.parent.mkdir(parents=True)
    path.symlink_to(target)
    assert ready_pid(path) is None
