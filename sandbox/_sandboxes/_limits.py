"""Kernel limits for bwrap sandboxes: cgroups (v1 memory/pids/cpu, or v2) and rlimits.

One cgroup per sandbox, ``<our own cgroup>/taskbus/<sandbox id>`` in each controller,
removed on destroy (and by the reaper). Without root or without the controllers,
``cgroup_support()`` says what is missing and sandboxes run with rlimits only.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from functools import cache
from pathlib import Path

from ._spec import SandboxSpec

CGROUP_ROOT = Path("/sys/fs/cgroup")
V1_CONTROLLERS = ("memory", "pids", "cpu")
PARENT = "taskbus"
CPU_PERIOD_US = 100_000


def _is_v2() -> bool:
    return (CGROUP_ROOT / "cgroup.controllers").is_file()


def _own_path(controller: str) -> str:
    """Our process's cgroup path in ``controller`` ('' for v2's unified hierarchy)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return "/"
    for line in lines:
        _, names, path = line.split(":", 2)
        if (controller == "" and names == "") or controller in names.split(","):
            return path
    return "/"


@cache
def _base(controller: str) -> Path | None:
    """``<mount>/<own path>/taskbus`` for a controller, or None when it is not usable."""
    mount = CGROUP_ROOT if controller == "" else CGROUP_ROOT / controller
    if not mount.is_dir():
        return None
    own = mount / _own_path(controller).lstrip("/")
    if not own.is_dir():
        own = mount
    if controller == "" and own != mount:
        # v2: a cgroup with processes cannot have children with controllers; use the root's.
        own = mount
    base = own / PARENT
    try:
        base.mkdir(exist_ok=True)
    except OSError:
        return None
    if controller == "":
        try:
            (own / "cgroup.subtree_control").write_text("+memory +pids +cpu")
            (base / "cgroup.subtree_control").write_text("+memory +pids +cpu")
        except OSError:
            pass
    return base if os.access(base, os.W_OK) else None


def cgroup_support() -> dict[str, bool]:
    """Which limits the bwrap backend enforces with cgroups on this machine."""
    if _is_v2():
        base = _base("")
        controllers = set()
        if base is not None:
            try:
                controllers = set((base / "cgroup.subtree_control").read_text().split())
            except OSError:
                pass
        return {c: base is not None and c in controllers for c in V1_CONTROLLERS}
    return {c: _base(c) is not None for c in V1_CONTROLLERS}


class Cgroups:
    """The cgroups of one sandbox. ``procs_files`` are written by the child before exec."""

    def __init__(self, paths: list[Path], v2: bool) -> None:
        self.paths = paths
        self.v2 = v2

    @property
    def procs_files(self) -> list[str]:
        return [str(p / "cgroup.procs") for p in self.paths]

    @classmethod
    def create(cls, sandbox_id: str, spec: SandboxSpec) -> Cgroups:
        """Make and configure the cgroups; controllers that are unavailable are skipped."""
        mib = 1024 * 1024
        if _is_v2():
            base = _base("")
            if base is None:
                return cls([], True)
            path = base / sandbox_id
            path.mkdir(exist_ok=True)
            _write(path / "memory.max", spec.memory_mb * mib)
            _write(path / "memory.swap.max", 0)
            _write(path / "pids.max", spec.pids)
            _write(path / "cpu.max", f"{int(spec.cpus * CPU_PERIOD_US)} {CPU_PERIOD_US}")
            return cls([path], True)
        paths = []
        for controller in V1_CONTROLLERS:
            base = _base(controller)
            if base is None:
                continue
            path = base / sandbox_id
            path.mkdir(exist_ok=True)
            paths.append(path)
            if controller == "memory":
                _write(path / "memory.limit_in_bytes", spec.memory_mb * mib)
                _write(path / "memory.memsw.limit_in_bytes", spec.memory_mb * mib)
                _write(path / "memory.swappiness", 0)
            elif controller == "pids":
                _write(path / "pids.max", spec.pids)
            elif controller == "cpu":
                _write(path / "cpu.cfs_period_us", CPU_PERIOD_US)
                _write(path / "cpu.cfs_quota_us", int(spec.cpus * CPU_PERIOD_US))
        return cls(paths, False)

    def pids(self) -> set[int]:
        found: set[int] = set()
        for path in self.paths:
            try:
                found.update(int(x) for x in (path / "cgroup.procs").read_text().split())
            except OSError:
                pass
        return found

    def kill_all(self, *, timeout: float = 5.0) -> bool:
        """SIGKILL every process in the cgroups until none is left. True when empty."""
        if self.v2 and self.paths and (self.paths[0] / "cgroup.kill").exists():
            _write(self.paths[0] / "cgroup.kill", 1)
        deadline = time.monotonic() + timeout
        while True:
            pids = self.pids()
            if not pids:
                return True
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if time.monotonic() > deadline:
                return False
            time.sleep(0.002)

    def oom_killed(self) -> bool:
        for path in self.paths:
            for name in ("memory.oom_control", "memory.events"):
                try:
                    text = (path / name).read_text()
                except OSError:
                    continue
                for line in text.splitlines():
                    key, _, value = line.partition(" ")
                    if key in ("oom_kill", "oom") and value.strip() not in ("", "0"):
                        return True
        return False

    def remove(self, *, timeout: float = 5.0) -> bool:
        """rmdir each cgroup (after kill_all); True when all are gone."""
        return remove_cgroup_dirs(self.paths, timeout=timeout)


def remove_cgroup_dirs(paths: list[Path], *, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    left = [p for p in paths if p.exists()]
    while left:
        for path in list(left):
            try:
                path.rmdir()
                left.remove(path)
            except FileNotFoundError:
                left.remove(path)
            except OSError as exc:
                if exc.errno != errno.EBUSY:
                    left.remove(path)
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.002)
    return not left


def _write(path: Path, value: object) -> None:
    try:
        path.write_text(str(value))
    except OSError:
        pass  # an absent knob (e.g. memsw without swap accounting) is not fatal
