"""What one sandbox is made of (``SandboxSpec``) and how a job's Policy maps onto it.

A spec is internal (never on the wire). Paths are host paths unless named
``sandbox_path``. Inside every sandbox:

    /workspace        spec.workspace, writable, the working directory
    /project          spec.project, read-only, or writable with spec.project_writable (only when given)
    /run/taskbus      spec.socket_dir, read-only (the model gateway's unix socket)
    /home/agent       tmpfs (HOME), holds spec.home_files before anything runs
    /home/agent/.claude           tmpfs of its own (a mount point: cannot be renamed away)
    /home/agent/.claude/agents    read-only bind of the host folder holding spec.catalog_files
    /home/agent/.claude/skills    (see _catalogdir.py); agents/... and skills/... of it
    /tmp              tmpfs
    everything else   the read-only Debian root filesystem of the sandbox image

The process runs as ``agent`` (uid/gid 1000), with no capabilities, no new
privileges, no network and an environment built from scratch (``base_env``).
"""

from __future__ import annotations

import math
import os
from pathlib import PurePosixPath
from typing import Any

import msgspec

from bus import InvalidInput, Policy, PolicyDenied

SANDBOX_UID = 1000
SANDBOX_GID = 1000
SANDBOX_USER = "agent"
HOME = "/home/agent"
WORKSPACE = "/workspace"
PROJECT = "/project"
SOCKET_MOUNT = "/run/taskbus"
CLAUDE_DIR = f"{HOME}/.claude"
DEFAULT_PATH = "/usr/local/bin:/usr/bin:/bin"
# Mount points that exist in the image so read-only binds may target them.
IMAGE_MOUNT_POINTS = ("/opt/claude", "/opt/taskbus", "/etc/claude-code")


class SandboxSpec(msgspec.Struct, frozen=True, kw_only=True):
    """Everything a backend needs to create one sandbox for one task.

    Limits: ``cpus`` (fractional CPUs), ``memory_mb`` (RAM, no swap), ``pids``
    (processes+threads), ``disk_mb`` (size of each tmpfs, and the largest file a
    process may write, including in /workspace), ``timeout_s`` (wall clock for the
    whole sandbox, counted from create; on expiry everything inside is killed and
    ``Sandbox.timed_out`` is true).
    """

    task_id: str
    runner_id: str
    workspace: str
    """Host folder, bind-mounted writable at /workspace (made owned by uid 1000)."""
    cpus: float = 1.0
    memory_mb: int = 1024
    pids: int = 256
    disk_mb: int = 512
    timeout_s: float = 600.0
    project: str | None = None
    """Host folder mounted read-only at /project, or None."""
    ro_mounts: tuple[tuple[str, str], ...] = ()
    """(host_path, sandbox_path) read-only binds: Claude Code install, managed settings, hooks.
    For bwrap a target inside the image must exist there: use the image's mount points
    (``IMAGE_MOUNT_POINTS``: /opt/claude, /opt/taskbus, /etc/claude-code), e.g. bind the
    folder holding managed-settings.json at /etc/claude-code."""
    socket_dir: str | None = None
    """Host folder mounted read-only at /run/taskbus (the model gateway's unix socket).
    Create the socket before ``create``: its sockets are then made connectable by uid
    1000 (mode 0666), and a pooled Docker sandbox gets them as hard links (same
    filesystem as the data dir, else the sandbox is created cold)."""
    home_files: dict[str, bytes] = {}
    """relative path -> content, written into the tmpfs home before anything runs."""
    env: dict[str, str] = {}
    """Extra environment on top of ``base_env()``; nothing of the runner's own leaks in."""
    project_writable: bool = False
    """Mount the project writable (the policy's ``fs_access`` is ``readwrite``): the agent
    (uid 1000) then changes the host folder in place, where its permissions allow."""
    catalog_files: dict[str, bytes] = {}
    """Catalog agents and skills: path relative to ~/.claude (``agents/<name>.md``,
    ``skills/<name>/<path>``) -> content. Written on the host into a folder bound
    read-only at ~/.claude/agents and ~/.claude/skills (immutable for the agent)."""
    late_sockets: bool = False
    """Sockets appear in ``socket_dir`` after create (a warm agent's gateway and hook are
    started when its task takes it): a pooled Docker sandbox, which gets the sockets as
    hard links made at hand-out, is never used for such a spec."""

    def __post_init__(self) -> None:
        for name in ("cpus", "memory_mb", "pids", "disk_mb", "timeout_s"):
            if getattr(self, name) <= 0:
                raise InvalidInput(f"sandbox {name} must be positive, got {getattr(self, name)!r}")
        for _, target in self.ro_mounts:
            _check_abs(target)
        for rel in self.home_files:
            _check_rel(rel)
            if PurePosixPath(rel).parts[:2] in ((".claude", "agents"), (".claude", "skills")):
                raise InvalidInput(f"home file {rel!r} is under a read-only catalog folder: pass it as a catalog file")
        for rel in self.catalog_files:
            _check_rel(rel)
            if len(PurePosixPath(rel).parts) < 2 or PurePosixPath(rel).parts[0] not in ("agents", "skills"):
                raise InvalidInput(f"catalog file {rel!r} must be under agents/ or skills/")

    @property
    def limit_class(self) -> tuple[float, int, int, int]:
        """Sandboxes with equal limits are interchangeable (warm pool key)."""
        return (self.cpus, self.memory_mb, self.pids, self.disk_mb)


def _check_abs(path: str) -> None:
    p = PurePosixPath(path)
    if not p.is_absolute() or ".." in p.parts or str(p) == "/":
        raise InvalidInput(f"sandbox mount target {path!r} must be an absolute path without '..'")


def _check_rel(path: str) -> None:
    p = PurePosixPath(path)
    if p.is_absolute() or ".." in p.parts or not p.parts:
        raise InvalidInput(f"home file {path!r} must be a relative path without '..'")


def base_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment every sandbox process starts from, built from nothing."""
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": HOME,
        "USER": SANDBOX_USER,
        "LOGNAME": SANDBOX_USER,
        "SHELL": "/bin/bash",
        "LANG": "C.UTF-8",
        "TMPDIR": "/tmp",
        "TERM": "dumb",
    }
    if extra:
        env.update(extra)
    return env


def spec_from_policy(
    policy: Policy,
    *,
    runner_id: str,
    workspace: str,
    ro_mounts: tuple[tuple[str, str], ...] | list[tuple[str, str]] = (),
    socket_dir: str | None = None,
    home_files: dict[str, bytes] | None = None,
    env: dict[str, str] | None = None,
    timeout_s: float | None = None,
    catalog_files: dict[str, bytes] | None = None,
    late_sockets: bool = False,
) -> SandboxSpec:
    """Map a job's Policy onto a spec: cpu, memory, pids, disk and wall-clock limits;
    the project root read-only for ``fs_access = "readonly"``, writable for
    ``"readwrite"``, absent for ``"none"``. ``timeout_s`` overrides the policy's (e.g. a
    margin for set-up). The project root is checked with ``checked_project_root`` first."""
    project = policy.project_root if policy.fs_access != "none" and policy.project_root else None
    if project is not None:
        project = checked_project_root(project)
    return SandboxSpec(
        task_id=policy.task_id,
        runner_id=runner_id,
        workspace=str(workspace),
        cpus=float(policy.cpus),
        memory_mb=int(policy.memory_mb),
        pids=int(policy.pids),
        disk_mb=int(policy.disk_mb),
        timeout_s=float(timeout_s if timeout_s is not None else policy.timeout_s),
        project=project,
        ro_mounts=tuple((str(h), str(s)) for h, s in ro_mounts),
        socket_dir=str(socket_dir) if socket_dir else None,
        home_files=dict(home_files or {}),
        env=dict(env or {}),
        project_writable=project is not None and policy.fs_access == "readwrite",
        catalog_files=dict(catalog_files or {}),
        late_sockets=late_sockets,
    )


def checked_project_root(signed: str) -> str:
    """The signed project root, if it still is what it resolves to; else PolicyDenied.

    Dispatch signs the ``os.path.realpath`` of the requested path after checking it is
    under the profile's roots. If it resolves elsewhere now (a component became a
    symlink after dispatch) the mount would give the sandbox whatever the link names,
    so the runner refuses (``permission='project_root'``; the runner reports it as a
    ``security`` event).
    """
    real = os.path.realpath(signed)
    if not os.path.isabs(signed) or real != os.path.normpath(signed):
        raise PolicyDenied(
            f"project root {signed!r} now resolves to {real!r}, not the path the server checked and "
            "signed; refusing to mount it (was a symlink planted after the task was accepted?)",
            permission="project_root",
        )
    return real


def rlimits(spec: SandboxSpec) -> dict[str, tuple[int, int]]:
    """Per-process rlimits (name -> (soft, hard)); backstops behind the cgroup limits.

    The address-space limit is generous (4x memory, at least 16 GiB) because the
    Claude Code binary reserves far more virtual memory than it uses; the memory
    cgroup is what really caps RAM.
    """
    mib = 1024 * 1024
    cpu_s = math.ceil(spec.timeout_s * max(spec.cpus, 1.0)) + 5
    as_bytes = max(spec.memory_mb * 4, 16 * 1024) * mib
    return {
        "NPROC": (spec.pids, spec.pids),
        "AS": (as_bytes, as_bytes),
        "FSIZE": (spec.disk_mb * mib, spec.disk_mb * mib),
        "NOFILE": (4096, 4096),
        "CPU": (cpu_s, cpu_s),
        "CORE": (0, 0),
    }


def describe(spec: SandboxSpec) -> dict[str, Any]:
    """A loggable summary (no env values, no file contents)."""
    return {
        "task_id": spec.task_id,
        "cpus": spec.cpus,
        "memory_mb": spec.memory_mb,
        "pids": spec.pids,
        "disk_mb": spec.disk_mb,
        "timeout_s": spec.timeout_s,
        "env_keys": sorted(spec.env),
    }
