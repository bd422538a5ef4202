"""The harness's mount clean-up: what an ended or killed test session left mounted under
pytest's temp root is detached; a session that still runs keeps its mounts."""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

from ci_guard import require
from mount_guard import detach_all_under, mount_points_under, sweep_dead_sessions

_libc = ctypes.CDLL(None, use_errno=True)


def _mount_tmpfs(path: Path) -> Path:
    path.mkdir(parents=True)
    assert _libc.mount(b"taskbus-test", os.fsencode(path), b"tmpfs", 0, b"size=1m") == 0, os.strerror(ctypes.get_errno())
    return path


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=30)
    return child.pid


def test_leftover_mounts_of_ended_sessions_are_detached_and_running_sessions_keep_theirs(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "root", "only root mounts; run the tests as root")
    temp_root = tmp_path / "pytest-of-someone"
    sessions = {name: temp_root / name for name in ("pytest-1", "pytest-2", "pytest-3", "pytest-4", "garbage-0c1d")}
    for folder in sessions.values():
        folder.mkdir(parents=True)
    (sessions["pytest-1"] / ".lock").write_text(str(_dead_pid()))  # killed: the lock stayed, its pid is gone
    (sessions["pytest-2"] / ".lock").write_text(str(os.getpid()))  # still running
    (sessions["garbage-0c1d"] / ".lock").write_text(str(os.getpid()))  # pytest is deleting it
    # pytest-3 has no lock: it ended; pytest-4 is the current session
    dead = _mount_tmpfs(sessions["pytest-1"] / "t0" / "data" / "runs" / "r" / "t_x" / "workspace")
    stacked = _mount_tmpfs(sessions["pytest-3"] / "t1" / "workspace")
    assert _libc.mount(b"taskbus-test", os.fsencode(stacked), b"tmpfs", 0, b"size=1m") == 0  # two on one point
    garbage = _mount_tmpfs(sessions["garbage-0c1d"] / "t2" / "workspace")
    alive = _mount_tmpfs(sessions["pytest-2"] / "t3" / "workspace")
    current = _mount_tmpfs(sessions["pytest-4"] / "t4" / "workspace")
    try:
        assert set(mount_points_under(temp_root)) == {dead, stacked, garbage, alive, current}
        swept = sweep_dead_sessions(temp_root, sessions["pytest-4"])
        assert sorted(swept) == sorted([dead, stacked, garbage])
        assert sorted(mount_points_under(temp_root)) == sorted([alive, current])
        os.rmdir(stacked)  # nothing stacked stays: the folder is an empty plain folder again
    finally:
        detach_all_under(tmp_path)
    assert mount_points_under(tmp_path) == []


def test_mount_points_with_spaces_and_newlines_in_their_names_are_read_back(tmp_path: Path) -> None:
    require(os.geteuid() == 0, "root", "only root mounts; run the tests as root")
    odd = _mount_tmpfs(tmp_path / "a b\tc\nd\\e" / "workspace")
    try:
        assert mount_points_under(tmp_path) == [odd]
    finally:
        detach_all_under(tmp_path)
    assert mount_points_under(tmp_path) == []
