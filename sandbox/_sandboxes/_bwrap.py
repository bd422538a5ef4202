"""The bubblewrap backend: namespaces + cgroups + rlimits, no daemon.

A sandbox is one long-lived bwrap process (its own mount, pid, net (no network:
only a loopback of its own), ipc, uts and cgroup namespaces; ``--die-with-parent``,
``--new-session``) whose root is a tmpfs holding read-only binds of the image's
extracted tree, the writable workspace, size-limited tmpfs /tmp, /dev/shm and
/home/agent, then remounted read-only (binds are nosuid). Its first process is
``cat`` on a pipe we hold (readiness echo).

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

``exec`` joins those namespaces with ``nsenter`` from a child that first enters the
sandbox's cgroups, sets the rlimits, no-new-privileges and a minimal bounding
set, then becomes uid 1000, so every command has exactly the sandbox's limits and
nothing of the runner's environment. Wall clock, kill and destroy SIGKILL the bwrap process group and
everything left in the cgroups; destroy removes the cgroups and the state folder.
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
from pathlib import Path

from bus import SandboxError, SandboxUnavailable, Settings

from . import _labels
from ._exec import Execution
from ._host import feed_stdin, prepare_host_dirs, pump
from ._image import find_rootfs
from ._labels import BwrapState, new_sandbox_id
from ._limits import Cgroups, remove_cgroup_dirs
from ._protocol import Sandbox, SandboxInfo
from ._spec import (
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
# nsenter needs these to join the namespaces (-r chroot) and become uid 1000.
_NSENTER_CAPS = ("dac_read_search", "setgid", "setuid", "sys_chroot", "sys_ptrace", "sys_admin")
_PRLIMIT_NAMES = {"NPROC": "nproc", "AS": "as", "FSIZE": "fsize", "NOFILE": "nofile", "CPU": "cpu", "CORE": "core"}
_SH = "/bin/sh"
_PRLIMIT = shutil.which("prlimit") or "/usr/bin/prlimit"
_SETPRIV_HOST = shutil.which("setpriv") or "/usr/bin/setpriv"
_SETPRIV = ["setpriv", "--reuid", str(SANDBOX_UID), "--regid", str(SANDBOX_GID), "--clear-groups",
            "--bounding-set", "-all", "--inh-caps", "-all", "--no-new-privs", "--"]


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
        target_pid: int,
        cgroups: Cgroups,
        folder: Path,
        nsenter: str,
        ids: tuple[int, int],
    ) -> None:
        super().__init__(sandbox_id, spec, Path(spec.workspace))
        self._proc = proc
        self._target = target_pid
        self._cgroups = cgroups
        self._folder = folder
        self._nsenter = nsenter
        self._ids = ids
        self._exec_procs: set[asyncio.subprocess.Process] = set()
        self._privileged = _privileged()
        self._limits = rlimits(spec)
        if self._privileged and cgroups.paths:
            # RLIMIT_NPROC counts every process of host uid 1000 (all sandboxes); the
            # pids cgroup is the per-sandbox limit, NPROC only a host-wide backstop.
            self._limits["NPROC"] = (HOST_NPROC, HOST_NPROC)
        self._prefix = self._launcher()

    @property
    def oom_killed(self) -> bool:
        return self._cgroups.oom_killed()

    def _launcher(self) -> list[str]:
        """Host commands each exec goes through (spawned with vfork: no Python preexec):
        sh joins the sandbox's cgroups, prlimit sets the rlimits, setpriv sets
        no-new-privileges and a bounding set of only what nsenter needs, nsenter
        joins the namespaces and becomes uid 1000."""
        prefix = _join_cgroups(self._cgroups)
        limits = [f"--{_PRLIMIT_NAMES[name]}={soft}:{hard}" for name, (soft, hard) in self._limits.items()]
        prefix += [_PRLIMIT, *limits, _SETPRIV_HOST, "--no-new-privs"]
        if self._privileged:
            prefix += ["--bounding-set", "-all," + ",".join(f"+{c}" for c in _NSENTER_CAPS)]
        prefix += ["--", self._nsenter, "-t", str(self._target), "-m", "-n", "-p", "-i", "-u", "-r", "-w"]
        if self._privileged:
            return prefix + ["-S", str(SANDBOX_UID), "-G", str(SANDBOX_GID), "--"]
        return prefix + ["-U", "--preserve-credentials", "--"]

    async def _exec(self, argv: list[str], *, env: dict[str, str] | None, stdin: bytes | None, cwd: str) -> Execution:
        full_env = base_env({**self.spec.env, **(env or {})})
        cmd = list(self._prefix)
        if cwd != WORKSPACE:
            cmd += ["/usr/bin/env", "-C", cwd, "--"]
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                *argv,
                stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env=full_env,
                start_new_session=True,
            )
        except (OSError, SandboxError) as exc:
            raise SandboxError(f"cannot start {argv[0]!r} in sandbox {self.id}: {exc}") from None
        self._exec_procs.add(proc)

        async def kill_one() -> None:
            _killpg(proc)

        ex = Execution(argv, kill=kill_one, timed_out=lambda: self._timed_out)
        loop = asyncio.get_running_loop()
        assert proc.stdout is not None and proc.stderr is not None
        ex._track(loop.create_task(pump(proc.stdout, "stdout", ex)))
        ex._track(loop.create_task(pump(proc.stderr, "stderr", ex)))
        if stdin is not None:
            ex._track(loop.create_task(feed_stdin(proc, stdin)))
        ex._track(loop.create_task(self._reap_exec(proc, ex)))
        return ex

    async def _reap_exec(self, proc: asyncio.subprocess.Process, ex: Execution) -> None:
        code = await proc.wait()
        self._exec_procs.discard(proc)
        ex._set_exit(code)

    async def kill(self) -> None:
        _killpg(self._proc)
        for proc in list(self._exec_procs):
            _killpg(proc)
        if self._cgroups.paths:
            await asyncio.to_thread(self._cgroups.kill_all)

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

    def _tools(self) -> tuple[str, str, Path]:
        bwrap = shutil.which("bwrap")
        if not bwrap:
            raise SandboxUnavailable("bubblewrap (bwrap) not found; install it with `apt-get install bubblewrap`")
        nsenter = shutil.which("nsenter")
        if not nsenter:
            raise SandboxUnavailable("nsenter not found; install util-linux")
        return bwrap, nsenter, find_rootfs(self.settings)

    def _args(self, spec: SandboxSpec, tree: Path) -> list[str]:
        mib = 1024 * 1024
        disk = str(spec.disk_mb * mib)
        if _privileged():
            args = ["--unshare-ipc", "--unshare-pid", "--unshare-net", "--unshare-uts", "--unshare-cgroup-try"]
            args += ["--cap-drop", "ALL"] + [x for cap in ("CAP_SETUID", "CAP_SETGID", "CAP_SETPCAP", "CAP_DAC_READ_SEARCH") for x in ("--cap-add", cap)]
        else:
            args = ["--unshare-all", "--unshare-user", "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_GID), "--cap-drop", "ALL"]
        args += ["--die-with-parent", "--new-session", "--hostname", "sandbox"]
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
        args += ["--bind", spec.workspace, WORKSPACE]
        if spec.project:
            args += ["--ro-bind", spec.project, PROJECT]
        if spec.socket_dir:
            args += ["--ro-bind", spec.socket_dir, SOCKET_MOUNT]
        for host, target in spec.ro_mounts:
            if not os.path.exists(host):
                raise SandboxError(f"read-only mount source {host} does not exist")
            _check_target(tree, target, is_dir=os.path.isdir(host))
            args += ["--ro-bind", host, target]
        args += ["--remount-ro", "/", "--chdir", WORKSPACE, "--clearenv", "--setenv", "PATH", "/usr/bin:/bin", "--"]
        return args + (_SETPRIV if _privileged() else []) + ["cat"]

    async def create(self, spec: SandboxSpec) -> BwrapSandbox:
        bwrap, nsenter, tree = self._tools()
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
            args = self._args(spec, tree)
            proc = await asyncio.create_subprocess_exec(
                *_join_cgroups(cgroups),
                bwrap,
                *args,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                start_new_session=True,
            )
            state.pid = proc.pid
            state.pid_start = _labels.process_start(proc.pid) or 0
            _labels.write_state(folder, state)
            target = (await _wait_ready(proc, sid))[-1]
            _fill_home(target, spec, uid, gid)  # a few syscalls on a fresh tmpfs
        except BaseException:
            await asyncio.shield(_cleanup_failed(proc, folder, cgroups))
            raise
        sandbox = BwrapSandbox(sid, spec, proc=proc, target_pid=target, cgroups=cgroups, folder=folder, nsenter=nsenter, ids=(uid, gid))
        sandbox._start_clock()
        logger.info("sandbox %s (bwrap, task %s) ready in %.0f ms", sid, spec.task_id, (time.monotonic() - started) * 1000)
        return sandbox

    async def reap(self, live_runner_ids: set[str], own_runner_id: str) -> int:
        from ._reaper import reap_bwrap

        return await asyncio.to_thread(reap_bwrap, self.settings.data_path, live_runner_ids, own_runner_id)

    async def prune(self, *, everything: bool = False) -> int:
        """Remove sandboxes whose bwrap process is gone (all of them with ``everything``)."""
        from ._reaper import prune_bwrap

        return await asyncio.to_thread(prune_bwrap, self.settings.data_path, everything=everything)

    async def list(self) -> list[SandboxInfo]:
        from ._reaper import list_bwrap

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
    """Own the tmpfs home by the sandbox user and write ``spec.home_files`` into it,
    through /proc/<pid>/root before anything runs inside (nothing there to trick us)."""
    home = Path(f"/proc/{target}/root{HOME}")
    if _privileged():
        os.chown(home, uid, gid)
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


async def _wait_ready(proc: asyncio.subprocess.Process, sid: str) -> list[int]:
    """Echo a line through the sandbox's ``cat``; returns the host pids bwrap, bwrap
    (pid 1 inside), cat."""
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    proc.stdin.write(b"ready\n")
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            await proc.stdin.drain()
            line = await proc.stdout.readline()
            if line != b"ready\n":
                await proc.wait()
                detail = (await proc.stderr.read()).decode(errors="replace").strip()[-400:]
                raise SandboxError(f"bwrap could not start sandbox {sid}: {detail or 'exit ' + str(proc.returncode)}")
    except TimeoutError:
        raise SandboxError(f"bwrap sandbox {sid} not ready after {READY_TIMEOUT_S} s") from None
    chain = [proc.pid]
    for _ in range(2):  # outer bwrap -> bwrap as pid 1 -> cat (setpriv exec'd into it)
        pid = chain[-1]
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        if not kids:
            raise SandboxError(f"bwrap sandbox {sid} lost its init process")
        chain.append(int(kids[0]))
    return chain


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
