"""What is mounted under a test's folders, read from ``/proc/self/mountinfo`` by the tests
themselves (not through the product's ``_wsmount``), and the clean-up of mounts a test or
a killed test session left behind.

A root runner loop-mounts every task's workspace (``sandbox._sandboxes._wsmount``). A mount
left under a pytest temp folder holds a loop device and makes pytest's own clean-up of old
temp folders warn ``(rm_rf) ... Device or resource busy`` in every later session.
"""

from __future__ import annotations

import ctypes
import os
import re
from pathlib import Path

MNT_DETACH = 2
_OCTAL = re.compile(r"\\([0-7]{3})")
_libc = ctypes.CDLL(None, use_errno=True)


def mount_points_under(folder: Path) -> list[Path]:
    """Mount points strictly under ``folder`` in this process's mount namespace, deepest first."""
    prefix = os.path.realpath(folder).rstrip("/") + "/"
    points: set[Path] = set()
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as mountinfo:
        for line in mountinfo:
            point = _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), line.split(" ")[4])
            if point.startswith(prefix):
                points.add(Path(point))
    return sorted(points, key=lambda p: len(p.parts), reverse=True)


def detach_all_under(folder: Path) -> list[Path]:
    """Lazily unmount every mount under ``folder`` (root only); the mount points found."""
    points = mount_points_under(folder)
    if os.geteuid() == 0:
        for point in points:
            for _ in range(16):  # mounts stacked on one point: until EINVAL (not a mount point)
                if _libc.umount2(os.fsencode(point), MNT_DETACH) != 0:
                    break
    return points


def _session_alive(folder: Path) -> bool:
    """Whether the pytest session owning the numbered temp ``folder`` still runs (its
    ``.lock`` names its pid; pytest removes the lock when the session ends)."""
    try:
        pid = int((folder / ".lock").read_text().strip() or "0")
    except (OSError, ValueError):
        return False
    from cli._up import pid_alive  # here, not at the top: the root conftest imports this module, the CLI is heavy

    return pid > 0 and pid_alive(pid)


def sweep_dead_sessions(temp_root: Path, current: Path) -> list[Path]:
    """Unmount what ended or killed pytest sessions left under ``temp_root``
    (``/tmp/pytest-of-<user>``): in pytest's ``garbage-*`` folders and in numbered folders
    whose session is gone. Never touches ``current`` or a session that is still running."""
    swept: list[Path] = []
    if os.geteuid() != 0:
        return swept
    root, current = Path(os.path.realpath(temp_root)), Path(os.path.realpath(current))
    tops = {root / p.relative_to(root).parts[0] for p in mount_points_under(root)}
    for top in sorted(tops):
        if top == current or (not top.name.startswith("garbage-") and _session_alive(top)):
            continue
        swept += detach_all_under(top)
    return swept
