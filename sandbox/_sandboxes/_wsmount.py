"""The workspace as its own size-limited filesystem of ``disk_mb`` per task.

A root runner makes a sparse image of ``disk_mb`` MiB next to the workspace folder
(``<folder>.img``), formats it ext4 (no journal, no reserved blocks, root owned by
the sandbox user) and loop-mounts it (``nosuid,nodev,noatime``, mode 0700; and
``noinit_itable``: the inode tables of a fresh sparse image already read as zeros, so
the kernel need not write them) on the folder; both backends bind that folder at /workspace, so every write inside counts
against one hard total and fails with ENOSPC past it. Its own filesystem also means
no hard link inside can reach a host file. When ext4 cannot be made (no mkfs.ext4,
no loop devices) a tmpfs of the same size is mounted instead (still a hard cap, but
in RAM). Without root nothing is mounted (the per-file RLIMIT_FSIZE is then the only
cap; ``taskbus doctor`` says so).

Why ext4 on a loop device and not tmpfs: see docs/security.md ("Workspace size").
Unmounting is lazy (MNT_DETACH) and repeated until the folder is no longer a mount
point (a pooled sandbox's workspace is bound on top of the task's own). Mounts left by
a killed runner are found in /proc/self/mountinfo under the runner's folders.
"""

from __future__ import annotations

import asyncio
import ctypes
import errno
import logging
import os
import subprocess
from pathlib import Path

logger = logging.getLogger(__name__)

MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096
MNT_DETACH = 2
INODES_PER_MB = 128
TOOL_TIMEOUT_S = 60
_libc = ctypes.CDLL(None, use_errno=True)


def can_mount() -> bool:
    return os.geteuid() == 0


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount_workspace(path: Path, size_mb: int, uid: int, gid: int) -> str:
    """Mount a fresh filesystem of ``size_mb`` on ``path`` (made if missing), owned by
    ``uid``/``gid``, mode 0700. Returns what was mounted: "ext4", "tmpfs" or "none"
    (we are not root). Blocking: call it in a thread."""
    path.mkdir(parents=True, exist_ok=True)
    if not can_mount():
        return "none"
    try:
        _mount_ext4(path, size_mb, uid, gid)
        return "ext4"
    except (OSError, subprocess.SubprocessError) as exc:
        logger.warning("cannot loop-mount an ext4 workspace on %s (%s); using a tmpfs of the same size", path, exc)
    _mount_tmpfs(path, size_mb, uid, gid)
    return "tmpfs"


async def mount_workspace_async(path: Path, size_mb: int, uid: int, gid: int) -> str:
    """``mount_workspace`` in a thread; when cancelled it still waits for the thread, so
    the caller's cleanup (``unmount_all``) runs after the mount, not before it."""
    job = asyncio.ensure_future(asyncio.to_thread(mount_workspace, path, size_mb, uid, gid))
    try:
        return await asyncio.shield(job)
    except asyncio.CancelledError:
        await asyncio.wait([job], timeout=2 * TOOL_TIMEOUT_S + 5)
        raise


def image_of(path: Path) -> Path:
    return path.with_name(path.name + ".img")


def _mount_ext4(path: Path, size_mb: int, uid: int, gid: int) -> None:
    image = image_of(path)
    fd = os.open(image, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            os.ftruncate(fd, size_mb * 1024 * 1024)
        finally:
            os.close(fd)
        inodes = max(2048, size_mb * INODES_PER_MB)
        _run(
            [
                "mkfs.ext4",
                "-q",
                "-F",
                "-m",
                "0",
                "-O",
                "^has_journal",
                "-N",
                str(inodes),
                "-E",
                f"root_owner={uid}:{gid},lazy_itable_init=1,nodiscard",
                str(image),
            ]
        )
        _run(["mount", "-t", "ext4", "-o", "loop,nosuid,nodev,noatime,noinit_itable", str(image), str(path)])
        try:
            os.rmdir(path / "lost+found")
            os.chmod(path, 0o700)
        except OSError:
            unmount_all(path)
            raise
    except BaseException:
        image.unlink(missing_ok=True)
        raise


def _run(argv: list[str]) -> None:
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        timeout=TOOL_TIMEOUT_S,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C"},
        check=False,
    )
    if done.returncode != 0:
        raise subprocess.SubprocessError(f"{argv[0]} failed: {(done.stderr or done.stdout).strip()[-300:]}")


def _mount_tmpfs(path: Path, size_mb: int, uid: int, gid: int) -> None:
    options = f"size={size_mb}m,nr_inodes={max(1024, size_mb * INODES_PER_MB)},mode=0700,uid={uid},gid={gid}"
    _check(
        _libc.mount(b"taskbus-ws", os.fsencode(path), b"tmpfs", MS_NOSUID | MS_NODEV, options.encode()),
        f"mounting a {size_mb} MiB tmpfs on {path}",
    )


def bind(source: Path, target: Path) -> None:
    """Bind the folder ``source`` (a mount point of ours) on ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    _check(_libc.mount(os.fsencode(source), os.fsencode(target), None, MS_BIND, None), f"binding {source} on {target}")


def is_mount(path: Path) -> bool:
    try:
        return os.path.ismount(path) and not path.is_symlink()
    except OSError:
        return False


def unmount_all(path: Path) -> None:
    """Detach every mount stacked on ``path`` (nothing when it is a plain folder)."""
    for _ in range(16):
        if _libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
            err = ctypes.get_errno()
            if err not in (errno.EINVAL, errno.ENOENT, errno.EPERM, errno.ENOTDIR):
                logger.warning("unmounting %s failed: %s", path, os.strerror(err))
            return


def mounts_under(folder: Path) -> list[Path]:
    """Mount points strictly under ``folder`` in our mount namespace, deepest first."""
    prefix = str(folder).rstrip("/") + "/"
    found = []
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split(" ")
        if len(fields) > 4:
            point = _unescape(fields[4])
            if point.startswith(prefix):
                found.append(Path(point))
    return sorted(set(found), key=lambda p: len(p.parts), reverse=True)


def unmount_under(folder: Path) -> int:
    """Detach every mount under ``folder`` (left by a killed runner, or by us); how many."""
    points = mounts_under(folder)
    for point in points:
        unmount_all(point)
    if points:
        logger.info("unmounted %d workspace mount(s) under %s", len(points), folder)
    return len(points)


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as \\ooo."""
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and i + 3 < len(field) + 0 and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)
