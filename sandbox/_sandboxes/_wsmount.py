"""The workspace as its own size-limited filesystem: a tmpfs of ``disk_mb`` per task.

A root runner mounts a tmpfs (``size=<disk_mb>m``, ``nr_inodes``, ``nosuid,nodev``,
mode 0700, owned by the sandbox user) on the task's workspace folder; both
backends bind that folder at /workspace, so every write inside counts against one
hard total and fails with ENOSPC past it. Its own filesystem also means no hard
link inside can reach a host file. Without root nothing is mounted (the per-file
RLIMIT_FSIZE is then the only cap; ``taskbus doctor`` says so).

Why tmpfs and not a loop-mounted ext4 image: see docs/security.md ("Workspace size").
Unmounting is lazy (MNT_DETACH) and repeated until the folder is no longer a mount
point (a pooled sandbox's workspace is bound on top of the task's own). Mounts left by
a killed runner are found in /proc/self/mountinfo under the runner's folders.
"""

from __future__ import annotations

import ctypes
import errno
import logging
import os
from pathlib import Path

logger = logging.getLogger(__name__)

MS_NOSUID = 2
MS_NODEV = 4
MS_BIND = 4096
MNT_DETACH = 2
INODES_PER_MB = 256
_libc = ctypes.CDLL(None, use_errno=True)


def can_mount() -> bool:
    return os.geteuid() == 0


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def mount_tmpfs(path: Path, size_mb: int, uid: int, gid: int) -> bool:
    """Mount a fresh tmpfs of ``size_mb`` on ``path`` (made if missing). False (and
    nothing mounted) when we are not root."""
    path.mkdir(parents=True, exist_ok=True)
    if not can_mount():
        return False
    options = f"size={size_mb}m,nr_inodes={max(1024, size_mb * INODES_PER_MB)},mode=0700,uid={uid},gid={gid}"
    _check(_libc.mount(b"taskbus-ws", os.fsencode(path), b"tmpfs", MS_NOSUID | MS_NODEV, options.encode()),
           f"mounting a {size_mb} MiB tmpfs on {path}")
    return True


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
