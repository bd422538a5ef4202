"""Runtime folders that no other local user can plant, link or pre-create.

Unix socket paths are limited to 107 bytes, so the runner keeps its sockets in a short
folder of the system temp dir. A predictable name there (``/tmp/taskbus-<hash>``) can be
created first by any local user, with a symlink inside; so the folder is made by
``mkdtemp`` (a fresh random name, created atomically, 0700, owned by us), and every
folder below it is created with one ``os.mkdir`` (never ``exist_ok``, never through a
link) and checked on an ``O_NOFOLLOW`` descriptor before its mode is set on that same
descriptor.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

from bus import SandboxError

SOCKET_ROOT_PREFIX = "tb-"
SOCKET_ROOT_RECORD = "socket_root"
"""File in the runner's run folder naming its socket root, so that the next life of a
runner killed without cleanup removes it."""


def make_socket_root() -> Path:
    """A new private folder (0700, random name) for one runner's unix sockets."""
    return Path(tempfile.mkdtemp(prefix=SOCKET_ROOT_PREFIX))


def remove_recorded_socket_root(record: Path) -> bool:
    """Remove the socket root a previous life of the runner recorded in ``record``, if it
    is still one of ours (a ``tb-`` folder of the temp dir, owned by us, private)."""
    try:
        path = Path(record.read_text().strip())
    except OSError:
        return False
    if path.parent != Path(tempfile.gettempdir()) or not path.name.startswith(SOCKET_ROOT_PREFIX):
        return False
    try:
        st = check_own_dir(path)
    except SandboxError:
        return False
    if st.st_mode & 0o077:
        return False
    shutil.rmtree(path, ignore_errors=True)
    return True


def make_dir(path: Path, mode: int) -> Path:
    """Create ``path`` (its parent must exist; ``path`` must not) and set ``mode``
    on the folder created, never on something a link points to."""
    os.mkdir(path, 0o700)
    _set_mode(path, mode)
    return path


def ensure_dir(path: Path, mode: int) -> Path:
    """``make_dir``, or check that an existing ``path`` is a real folder of ours that
    nobody else can write (its mode is left as it is)."""
    try:
        return make_dir(path, mode)
    except FileExistsError:
        check_own_dir(path)
        return path


def check_own_dir(path: Path) -> os.stat_result:
    """Raise ``SandboxError`` unless ``path`` is a folder (not a link) owned by this
    process's user and not writable by group or others."""
    try:
        st = os.lstat(path)
    except OSError as exc:
        raise SandboxError(f"runtime folder {path} is not usable: {exc.strerror}") from None
    _check(path, st)
    return st


def _check(path: Path, st: os.stat_result) -> None:
    if not stat.S_ISDIR(st.st_mode):
        raise SandboxError(f"runtime folder {path} is not a folder (a link or file planted there?); remove it")
    if st.st_uid != os.geteuid():
        raise SandboxError(f"runtime folder {path} belongs to uid {st.st_uid}, not to this runner; remove it")
    if st.st_mode & 0o022:
        raise SandboxError(f"runtime folder {path} is writable by other users (mode {st.st_mode & 0o777:o}); remove it")


def _set_mode(path: Path, mode: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        _check(path, os.fstat(fd))
        os.fchmod(fd, mode)
    finally:
        os.close(fd)
