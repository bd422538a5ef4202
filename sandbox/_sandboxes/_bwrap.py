"""The bubblewrap backend: namespaces + cgroups + rlimits, no daemon.

A sandbox is one long-lived bwrap process (its own mount, pid, net (no network:
only a loopback of its own), ipc, uts and cgroup namespaces; ``--die-with-parent``,
``--new-session``) whose root is a tmpfs holding read-only binds of the image's
extracted tree, the writable workspace, size-limited tmpfs /tmp, /dev/shm and
/home/agent, then remounted read-only (binds are nosuid). bwrap is started by
``sh`` after it joined the sandbox's cgroups, so everything inside is counted from
the first instruction. Its first process is the exec agent (``_agent.py``), which
sets the rlimits on itself and starts every command (fork + exec through a unix
socket in the sandbox's state folder, bound at /run/taskbus-agent).

Two modes:
- runner is root (the normal case): bwrap runs as root *without* a user
  namespace (one would map the sandbox user to host root) and with every
  capability dropped except those ``setpriv`` needs to become uid/gid 1000 with
  an empty bounding set and no-new-privileges; so sandbox processes are host uid
  1000 without capabilities, as in Docker. This is ``--unshare-all`` minus the
  user namespace.
- runner is not root: ``--unshare-all --unshare-user --uid 1000``: the runner's
  uid is mapped to 1000 inside; no cgroups (rlimits only); the folders bound in
  must be reachable by the runner's uid.

In both modes bwrap loads the seccomp filter of ``_seccomp.py`` (``--seccomp``)
just before the agent starts. Commands therefore inherit everything from the agent:
namespaces, cgroups, rlimits, uid 1000, no capabilities (empty bounding set),
no-new-privileges, the seccomp filter; their
environment is built from scratch. Wall clock, kill and destroy SIGKILL the bwrap
process group and everything left in the cgroups; destroy removes the cgroups and
the state folder.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import shlex
import shutil
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

from bus import SandboxError, SandboxUnavailable, Settings

from . import _labels
from ._agent import AGENT_DIR, AGENT_SOCKET, agent_command, agent_exec, wait_for_agent
from ._catalogdir import catalog_binds, fill_catalog, make_catalog_dirs
from ._exec import Execution
from ._host import prepare_host_dirs
from ._image import find_rootfs
from ._labels import BwrapState, new_sandbox_id
from ._limits import Cgroups, remove_cgroup_dirs
from ._protocol import Sandbox, SandboxInfo
from ._reaper import list_bwrap, prune_bwrap, reap_bwrap
from ._seccomp import filter_fd
from ._spec import (
    CLAUDE_DIR,
    HOME,
    IMAGE_MOUNT_POINTS,
    PROJECT,
    SANDBOX_GID,
    SANDBOX_UID,
    SOCKET_MOUNT,
    WORKSPACE,
    SandboxSpec,
    base_env,
    rlimits,
)

logger = logging.getLogger(__name__)

READY_TIMEOUT_S = 15.0
HOST_NPROC = 4096
_SKIP_ROOT = {"proc", "dev", "sys", "tmp", "run", "home", "workspace", "project", "lost+found"}
_DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
_SH = "/bin/sh"
_SETPRIV = [
    "setpriv",
    "--reuid",
    str(SANDBOX_UID),
    "--regid",
    str(SANDBOX_GID),
    "--clear-groups",
    "--bounding-set",
    "-all",
    "--inh-caps",
    "-all",
    "--no-new-privs",
    "--",
]


def _privileged() -> bool:
    return os.geteuid() == 0


def _host_ids() -> tuple[int, int]:
    """Host uid/gid sandbox processes run as (1000 when we are root, else our own)."""
    if os.geteuid() == 0:
        return SANDBOX_UID, SANDBOX_GID
    return os.getuid(), os.getgid()


class BwrapSandbox(Sandbox):
    backend = "bwrap"

    def __init__(
        self,
        sandbox_id: str,
        spec: SandboxSpec,
        *,
        proc: asyncio.subprocess.Process,
        cgroups: Cgroups,
        folder: Path,
    ) -> None:
        super().__init__(sandbox_id, spec, Path(spec.workspace))
        self._proc = proc
        self._cgroups = cgroups
        self._folder = folder
        # Connect through an O_PATH fd of the folder: unix socket paths are limited to 108 bytes.
        self._agent_fd = os.open(folder / "agent", os.O_PATH | os.O_CLOEXEC)
        self._agent_socket = f"/proc/self/fd/{self._agent_fd}/{AGENT_SOCKET}"
        self.agent_pid = 0
        """Host pid of the sandbox's first process (the agent)."""

    @property
    def oom_killed(self) -> bool:
        return self._cgroups.oom_killed()

    async def _exec(
        self, argv: list[str], *, env: dict[str, str] | None, stdin: bytes | AsyncIterator[bytes] | None, cwd: str
    ) -> Execution:
        full_env = base_env({**self.spec.env, **(env or {})})
        return await agent_exec(self._agent_socket, argv, env=full_env, stdin=stdin, cwd=cwd, timed_out=lambda: self._timed_out)

    async def kill(self) -> None:
        _killpg(self._proc)
        if self._cgroups.paths:
            await asyncio.to_thread(self._cgroups.kill_all)

    async def stop_all(self) -> bool:
        _killpg(self._proc)
        if not self._cgroups.paths:
            return False
        return await asyncio.to_thread(self._cgroups.kill_all)

    async def _teardown(self) -> None:
        await self.kill()
        try:
            async with asyncio.timeout(5):
                await self._proc.wait()
        except TimeoutError:
            logger.warning("bwrap of sandbox %s did not exit after SIGKILL", self.id)
        if self._cgroups.paths:
            await asyncio.to_thread(self._cgroups.kill_all, timeout=2)
            await asyncio.to_thread(self._cgroups.remove)
        os.close(self._agent_fd)
        await asyncio.to_thread(shutil.rmtree, self._folder, True)


def _killpg(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the process group a child of ours leads, unless it was already reaped
    (its pid could belong to someone else by now)."""
    if proc.returncode is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


class BwrapBackend:
    """Sandboxes made with bubblewrap from the image's extracted root filesystem."""

    name = "bwrap"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._root = _labels.sandboxes_dir(settings.data_path)

    def _tools(self) -> tuple[str, Path]:
        bwrap = shutil.which("bwrap")
        if not bwrap:
            raise SandboxUnavailable("bubblewrap (bwrap) not found; install it with `apt-get install bubblewrap`")
        return bwrap, find_rootfs(self.settings)

    def _args(self, spec: SandboxSpec, tree: Path, agent_dir: Path, seccomp_fd: int, catalog: Path) -> list[str]:
        mib = 1024 * 1024
        disk = str(spec.disk_mb * mib)
        seccomp = ["--seccomp", str(seccomp_fd)]  # loaded just before the first process starts
        if _privileged():
            args = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
            args += ["--cap-drop", "ALL"] + [
                x for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_DAC_READ_SEARCH") for x in ("--cap-add", cap)
            ]
        else:
            args = ["--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID), "--cap-drop", "ALL"]
        args += ["--die-with-parent", "--new-session", "--hostname", "sandbox", *seccomp]
        args += _root_binds(str(tree))
        args += ["--dir", "/run", "--dir", "/home", "--proc", "/proc"]
        args += ["--size", str(mib), "--tmpfs", "/dev"]
        for dev in _DEVICES:
            args += ["--dev-bind", f"/dev/{dev}", f"/dev/{dev}"]
        for i, name in enumerate(("stdin", "stdout", "stderr")):
            args += ["--symlink", f"/proc/self/fd/{i}", f"/dev/{name}"]
        args += ["--symlink", "/proc/self/fd", "/dev/fd", "--size", disk, "--perms", "1777", "--tmpfs", "/dev/shm"]
        args += ["--size", disk, "--perms", "1777", "--tmpfs", "/tmp"]
        args += ["--size", disk, "--perms", "0700", "--tmpfs", HOME]
        # ~/.claude a mount point of its own, the catalog folders read-only binds in it
        args += ["--size", disk, "--perms", "0700", "--tmpfs", CLAUDE_DIR]
        for host, target in catalog_binds(catalog):
            args += ["--ro-bind", host, target]
        args += ["--bind", spec.workspace, WORKSPACE]
        if spec.project:
            args += ["--bind" if spec.project_writable else "--ro-bind", spec.project, PROJECT]
        if spec.socket_dir:
            args += ["--ro-bind", spec.socket_dir, SOCKET_MOUNT]
        for host, target in spec.ro_mounts:
            if not os.path.exists(host):
                raise SandboxError(f"read-only mount source {host} does not exist")
            _check_target(tree, target, is_dir=os.path.isdir(host))
            args += ["--ro-bind", host, target]
        args += ["--bind", str(agent_dir), AGENT_DIR]
        args += ["--remount-ro", "/", "--chdir", WORKSPACE, "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--"]
        return args + (_SETPRIV if _privileged() else []) + agent_command(_agent_rlimits(spec))

    async def create(self, spec: SandboxSpec) -> BwrapSandbox:
        bwrap, tree = self._tools()
        sid = new_sandbox_id()
        uid, gid = _host_ids()
        started = time.monotonic()
        folder = self._root / sid
        folder.mkdir(parents=True, mode=0o700)
        state = BwrapState(
            id=sid, task_id=spec.task_id, runner_id=spec.runner_id, life=_labels.life_token(), created_at=time.time(), uid=uid
        )
        cgroups = Cgroups([], False)
        proc: asyncio.subprocess.Process | None = None
        try:
            if _privileged():
                cgroups = Cgroups.create(sid, spec)
                state.cgroups = [str(p) for p in cgroups.paths]
            _labels.write_state(folder, state)
            prepare_host_dirs(spec, uid, gid)
            agent_dir = folder / "agent"
            agent_dir.mkdir(mode=0o700)
            os.chown(agent_dir, uid, gid)
            catalog = make_catalog_dirs(folder)
            fill_catalog(catalog, spec.catalog_files)
            seccomp_fd = filter_fd()
            try:
                args = self._args(spec, tree, agent_dir, seccomp_fd, catalog)
                with open(folder / "bwrap.log", "wb") as log:  # noqa: ASYNC230 (creating a local log file does not block)
                    proc = await asyncio.create_subprocess_exec(
                        *_join_cgroups(cgroups),
                        bwrap,
                        *args,
                        stdin=asyncio.subprocess.DEVNULL,
                        stdout=log,
                        stderr=log,
                        env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                        start_new_session=True,
                        pass_fds=(seccomp_fd,),
                    )
            finally:
                os.close(seccomp_fd)
            state.pid = proc.pid
            state.pid_start = _labels.process_start(proc.pid) or 0
            _labels.write_state(folder, state)
            await _wait_ready(proc, folder, sid)
            agent_pid = _sandbox_pid(proc.pid, sid)
            _fill_home(agent_pid, spec, uid, gid)  # a few syscalls on a fresh tmpfs
        except BaseException:
            await asyncio.shield(_cleanup_failed(proc, folder, cgroups))
            raise
        sandbox = BwrapSandbox(sid, spec, proc=proc, cgroups=cgroups, folder=folder)
        sandbox.agent_pid = agent_pid
        sandbox._start_clock()
        logger.info("sandbox %s (bwrap, task %s) ready in %.0f ms", sid, spec.task_id, (time.monotonic() - started) * 1000)
        return sandbox

    async def reap(self, live_runner_ids: set[str], own_runner_id: str) -> int:
        return await asyncio.to_thread(reap_bwrap, self.settings.data_path, live_runner_ids, own_runner_id)

    async def prune(self, *, everything: bool = False) -> int:
        """Remove sandboxes whose bwrap process is gone (all of them with ``everything``)."""
        return await asyncio.to_thread(prune_bwrap, self.settings.data_path, everything=everything)

    async def list(self) -> list[SandboxInfo]:
        return await asyncio.to_thread(list_bwrap, self.settings.data_path)

    async def close(self) -> None:
        return None


def _join_cgroups(cgroups: Cgroups) -> list[str]:
    """A prefix that makes the command start inside ``cgroups``: sh moves itself in
    (v1 and v2 take "0" as "the writer") and execs the rest, so everything the
    command starts is counted from its first instruction."""
    if not cgroups.procs_files:
        return []
    joins = " && ".join(f"echo 0 > {shlex.quote(p)}" for p in cgroups.procs_files)
    return [_SH, "-c", f'{joins} && exec "$0" "$@"']


def _agent_rlimits(spec: SandboxSpec) -> dict[str, tuple[int, int]]:
    """Rlimits the agent sets on itself (so on everything it starts). As root,
    RLIMIT_NPROC counts every process of host uid 1000 (all sandboxes, containers
    too): the pids cgroup is the per-sandbox limit and NPROC a host-wide backstop.
    Without root the agent is in its own user namespace, where NPROC is per sandbox."""
    limits = rlimits(spec)
    if _privileged():
        limits["NPROC"] = (HOST_NPROC, HOST_NPROC)
    return limits


def _check_target(tree: Path, target: str, *, is_dir: bool) -> None:
    """bwrap can only create a mount point on its tmpfs root, not inside the read-only
    image: the target must exist in the image, or its top-level folder must not."""
    parts = Path(target).parts[1:]
    top = tree / parts[0]
    if parts[0] in _SKIP_ROOT or not top.exists():
        return
    existing = tree.joinpath(*parts)
    if existing.exists() and existing.is_dir() == is_dir:
        return
    kind = "folder" if is_dir else "file"
    raise SandboxError(
        f"cannot mount a {kind} at {target}: it is not in the sandbox image; mount it under one of "
        f"the image's mount points ({', '.join(IMAGE_MOUNT_POINTS)}), e.g. a folder at /etc/claude-code"
    )


@functools.cache
def _root_binds(tree: str) -> tuple[str, ...]:
    """Read-only binds (and symlinks) of the image tree's top level; the tree never changes."""
    args: list[str] = []
    for entry in sorted(os.listdir(tree)):
        if entry in _SKIP_ROOT:
            continue
        path = Path(tree, entry)
        if path.is_symlink():
            args += ["--symlink", os.readlink(path), f"/{entry}"]
        elif path.is_dir():
            args += ["--ro-bind", str(path), f"/{entry}"]
    return tuple(args)


def _fill_home(target: int, spec: SandboxSpec, uid: int, gid: int) -> None:
    """Own the tmpfs home (and ~/.claude) by the sandbox user and write ``spec.home_files`` into it,
    through /proc/<pid>/root before anything runs inside (nothing there to trick us)."""
    home = Path(f"/proc/{target}/root{HOME}")
    if _privileged():
        os.chown(home, uid, gid)
        os.chown(Path(f"/proc/{target}/root{CLAUDE_DIR}"), uid, gid)
    for rel, content in spec.home_files.items():
        path = home / rel
        parent = home
        for part in Path(rel).parent.parts:
            parent = parent / part
            if not parent.is_dir():
                parent.mkdir(mode=0o700)
                if _privileged():
                    os.chown(parent, uid, gid)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            os.write(fd, content)
            if _privileged():
                os.fchown(fd, uid, gid)
        finally:
            os.close(fd)


async def _wait_ready(proc: asyncio.subprocess.Process, folder: Path, sid: str) -> None:
    """Until the sandbox's agent answers; bwrap's own error when it exits first."""
    waiter = asyncio.ensure_future(wait_for_agent(folder, timeout=READY_TIMEOUT_S))
    exited = asyncio.ensure_future(proc.wait())
    try:
        await asyncio.wait({waiter, exited}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
        if not waiter.done():
            waiter.cancel()
    if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
        return
    if waiter.done() and isinstance(waiter.exception(), TimeoutError):
        raise SandboxError(f"bwrap sandbox {sid} not ready after {READY_TIMEOUT_S} s")
    try:
        detail = (folder / "bwrap.log").read_text(errors="replace").strip()[-400:]
    except OSError:
        detail = ""
    raise SandboxError(f"bwrap could not start sandbox {sid}: {detail or 'exit ' + str(proc.returncode)}")


def _sandbox_pid(bwrap_pid: int, sid: str) -> int:
    """Host pid of the agent: outer bwrap -> bwrap as pid 1 -> agent."""
    pid = bwrap_pid
    for _ in range(2):
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if not kids:
            raise SandboxError(f"bwrap sandbox {sid} lost its first process")
        pid = int(kids[0])
    return pid


async def _cleanup_failed(proc: asyncio.subprocess.Process | None, folder: Path, cgroups: Cgroups) -> None:
    if proc is not None:
        _killpg(proc)
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            logger.warning("bwrap %s did not exit after SIGKILL", proc.pid)
    if cgroups.paths:
        await asyncio.to_thread(cgroups.kill_all, timeout=2)
        await asyncio.to_thread(remove_cgroup_dirs, cgroups.paths)
    await asyncio.to_thread(shutil.rmtree, folder, True)
