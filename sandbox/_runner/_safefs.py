"""Reading and writing a hostile folder without ever leaving it.

Every name is resolved one component at a time relative to an open directory fd,
with ``O_NOFOLLOW`` (a link is never followed, a link in a folder's place fails
with ELOOP/ENOTDIR), ``O_NONBLOCK`` (a FIFO in a file's place opens without
waiting for a writer) and ``O_CLOEXEC``; the type and size checks are ``fstat``
on the open fd, and data is read from that same fd. So what is read is always a
regular file inside the folder, whatever was renamed where in between. Every walk
and read is bounded (entries, depth, bytes) and meant to run in a thread
(``asyncio.to_thread``); ``stop`` (a ``threading.Event``) ends it early.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bus import InvalidInput

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
MAX_DEPTH = 64
CHUNK = 1 << 20


class Stopped(Exception):
    """The caller's stop event was set (its time ran out)."""


@dataclass(frozen=True)
class Entry:
    """A regular file seen by ``walk`` (identity and size from ``fstatat`` without following)."""

    size: int
    mtime_ns: int
    dev: int
    ino: int


@dataclass
class Walk:
    files: dict[str, Entry]
    special: list[tuple[str, str]]
    """(path, kind) of FIFOs, sockets and devices: never opened for reading."""
    links: list[tuple[str, bool]]
    """(path, points outside the folder) of symbolic links: never followed."""
    truncated: bool = False
    """More entries than ``max_entries``: the rest was not looked at."""


@contextlib.contextmanager
def open_root(path: Path) -> Iterator[int]:
    """An fd of the folder ``path`` itself (which must not be a link)."""
    fd = os.open(path, _DIR_FLAGS)
    try:
        yield fd
    finally:
        os.close(fd)


def kind_of(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "fifo"),
        (stat.S_ISSOCK, "socket"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISLNK, "link"),
        (stat.S_ISDIR, "folder"),
    ):
        if test(mode):
            return name
    return "file"


def walk(root: Path, *, skip_dirs: set[str], max_entries: int, stop: threading.Event | None = None) -> Walk:
    """Regular files, special files and links under ``root`` by relative path. Links and
    special files are never opened; folders are entered through O_NOFOLLOW fds only, on
    the root's filesystem only, at most ``MAX_DEPTH`` deep."""
    result = Walk({}, [], [])
    with open_root(root) as fd:
        dev = os.fstat(fd).st_dev
        budget = [max_entries]
        _walk_dir(fd, "", dev, 0, skip_dirs, budget, result, stop)
    return result


def _walk_dir(
    fd: int, prefix: str, dev: int, depth: int, skip: set[str], budget: list[int], out: Walk, stop: threading.Event | None
) -> None:
    with os.scandir(fd) as it:
        names = []
        for de in it:
            if budget[0] <= 0:
                out.truncated = True
                break
            budget[0] -= 1
            names.append(de.name)
    for name in sorted(names):
        if stop is not None and stop.is_set():
            raise Stopped
        rel = prefix + name
        try:
            st = os.stat(name, dir_fd=fd, follow_symlinks=False)
        except OSError:
            continue  # gone meanwhile
        if stat.S_ISREG(st.st_mode):
            out.files[rel] = Entry(st.st_size, st.st_mtime_ns, st.st_dev, st.st_ino)
        elif stat.S_ISDIR(st.st_mode):
            if name in skip or depth + 1 >= MAX_DEPTH or st.st_dev != dev:
                continue
            try:
                sub = os.open(name, _DIR_FLAGS, dir_fd=fd)
            except OSError:
                out.special.append((rel, "folder swapped during the walk"))
                continue
            try:
                if os.fstat(sub).st_ino != st.st_ino:
                    out.special.append((rel, "folder swapped during the walk"))
                    continue
                _walk_dir(sub, rel + "/", dev, depth + 1, skip, budget, out, stop)
            finally:
                os.close(sub)
        elif stat.S_ISLNK(st.st_mode):
            out.links.append((rel, _points_outside(fd, name, rel)))
        else:
            out.special.append((rel, kind_of(st.st_mode)))


def _points_outside(fd: int, name: str, rel: str) -> bool:
    try:
        target = os.readlink(name, dir_fd=fd)
    except OSError:
        return False
    if target.startswith("/"):
        return True
    depth = len(PurePosixPath(rel).parts) - 1
    for part in PurePosixPath(target).parts:
        depth += -1 if part == ".." else 0 if part == "." else 1
        if depth < 0:
            return True
    return False


class Refused(Exception):
    """A file that is not what the walk saw (a link, special file, another inode, grown)."""


@contextlib.contextmanager
def _open_beneath(root_fd: int, rel: str, *, create: bool = False) -> Iterator[int]:
    """The directory fd of ``rel``'s parent, reached component by component without
    following links (``create``: missing folders are made, mode 0755)."""
    parts = PurePosixPath(rel).parts
    fds: list[int] = []
    try:
        current = root_fd
        for part in parts[:-1]:
            if create:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(part, 0o755, dir_fd=current)
            current = os.open(part, _DIR_FLAGS, dir_fd=current)
            fds.append(current)
        yield current
    finally:
        for fd in fds:
            os.close(fd)


def read_file(root: Path, rel: str, expected: Entry, *, max_bytes: int, stop: threading.Event | None = None) -> tuple[bytes, str]:
    """Content and sha256 of the regular file ``rel`` under ``root``, read from one fd
    opened without following links; Refused unless it is the inode ``walk`` saw, of the
    size it saw (at most ``max_bytes``), and no longer."""
    if expected.size > max_bytes:
        raise Refused(f"{expected.size} bytes, over the limit")
    with open_root(root) as root_fd, _open_beneath_checked(root_fd, rel) as parent:
        try:
            fd = os.open(PurePosixPath(rel).name, _READ_FLAGS, dir_fd=parent)
        except OSError as exc:
            raise Refused(f"cannot open it without following links ({errno.errorcode.get(exc.errno or 0, exc)})") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise Refused(f"a {kind_of(st.st_mode)} is now where a file was")
            if (st.st_dev, st.st_ino) != (expected.dev, expected.ino):
                raise Refused("another file was swapped in after the walk")
            if st.st_size != expected.size:
                raise Refused("its size changed after the walk")
            digest = hashlib.sha256()
            chunks: list[bytes] = []
            left = expected.size
            while left > 0:
                if stop is not None and stop.is_set():
                    raise Stopped
                chunk = os.read(fd, min(CHUNK, left))
                if not chunk:
                    raise Refused("it shrank while being read")
                left -= len(chunk)
                chunks.append(chunk)
                digest.update(chunk)
            if os.read(fd, 1):
                raise Refused("it grew while being read")
            return b"".join(chunks), digest.hexdigest()
        finally:
            os.close(fd)


@contextlib.contextmanager
def _open_beneath_checked(root_fd: int, rel: str) -> Iterator[int]:
    try:
        cm = _open_beneath(root_fd, rel)
        parent = cm.__enter__()
    except OSError as exc:
        raise Refused(f"a folder on its path is a link or gone ({errno.errorcode.get(exc.errno or 0, exc)})") from None
    try:
        yield parent
    finally:
        cm.__exit__(None, None, None)


def write_new_file(root: Path, rel: str, data: bytes) -> None:
    """Create ``rel`` under ``root`` (folders as needed) through dir fds, never
    following a link and never replacing anything (O_EXCL)."""
    with open_root(root) as root_fd:
        try:
            with _open_beneath(root_fd, rel, create=True) as parent:
                fd = os.open(
                    PurePosixPath(rel).name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=parent
                )
        except FileExistsError:
            raise InvalidInput(f"file path {rel!r} is given twice or names a folder of another file") from None
        except (NotADirectoryError, OSError) as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR, errno.EISDIR):
                raise InvalidInput(f"file path {rel!r} passes through a file or a link") from None
            raise
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
