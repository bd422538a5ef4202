"""Private folders and files: the data dir 0700, databases and secrets 0600.

Every process that may create the data dir, a database or a secret file goes through
here, so permissions do not depend on which process came first or on the umask.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from ._errors import ConfigError

SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")


def private_dir(path: Path, *, tighten: bool = False) -> Path:
    """Create ``path`` 0700 when missing (its missing parents too, so the data dir is 0700
    whichever process makes it first). With ``tighten``, an existing folder of ours is
    taken down to 0700 as well (for folders taskbus owns: its NATS store, credentials)."""
    for missing in reversed([p for p in (path, *path.parents) if not p.exists()]):
        try:
            missing.mkdir(mode=0o700)
        except FileExistsError:
            pass
    st = os.stat(path)
    if not stat.S_ISDIR(st.st_mode):
        raise ConfigError(str(path), "is not a directory; remove it or choose another data dir")
    if tighten and st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
        os.chmod(path, 0o700)
    return path


def owned_private_dir(path: Path) -> Path:
    """``private_dir`` (tightened) that must be a real folder (not a link) owned by this user."""
    private_dir(path, tighten=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise ConfigError(str(path), "is not a directory owned by this user; remove it and start again")
    return path


def write_private(path: Path, text: str) -> bool:
    """Create ``path`` 0600 with ``text`` unless it exists (O_EXCL|O_NOFOLLOW). True when made."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except FileExistsError:
        return False
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return True


def private_file(path: Path) -> Path:
    """Make sure ``path`` exists as a regular file, 0600 when it is ours (links refused)."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600)
    except OSError as exc:
        raise ConfigError(str(path), f"cannot open it safely ({exc.strerror}); it must be a regular file, not a link") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(str(path), "is not a regular file")
        if st.st_uid == os.getuid() and stat.S_IMODE(st.st_mode) & 0o077:
            os.fchmod(fd, 0o600)
    finally:
        os.close(fd)
    return path


def private_database(path: Path) -> Path:
    """Before SQLite opens ``path`` for writing: its folder made 0700 if missing, the file
    and its existing side files (WAL, shared memory, journal) 0600. SQLite creates new side
    files with the database file's permissions."""
    private_dir(path.parent)
    private_file(path)
    for suffix in SQLITE_SIDE_FILES:
        side = path.with_name(path.name + suffix)
        if side.exists():
            private_file(side)
    return path
