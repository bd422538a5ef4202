"""Download a task's artifacts from the Object Store into a folder (``taskbus tasks artifacts``).

Artifact names come from inside a sandbox, so they are hostile: a name is used only when
it is a plain relative path (no ``..``, no absolute path, no empty or ``.`` parts, no NUL
or backslash, at most ``MAX_DEPTH`` levels). On the way out nothing is followed: every
folder under ``--out`` is created or opened component by component with ``O_NOFOLLOW``
relative to its parent's descriptor, the file is written to a fresh temporary name in
its folder (``O_EXCL``), its size and sha256 checked against the ``artifact`` event,
and only then renamed into place (an existing file only with ``force``; the rename
replaces a link, never writes through it).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus import Artifact, Bus, InvalidInput, NotFound

from ._dispatch_events import replay_events

logger = logging.getLogger(__name__)

MAX_DEPTH = 32
Progress = Callable[[str, int, int], None]
"""(artifact path, bytes written so far, its size)."""


@dataclass(frozen=True)
class Download:
    path: str
    size: int
    sha256: str
    object_key: str
    saved_to: str = ""


def safe_parts(name: str) -> list[str]:
    """The components of a relative artifact path, or InvalidInput when it could escape."""
    parts = name.split("/")
    bad = (
        not name
        or "\0" in name
        or "\\" in name
        or name.startswith("/")
        or len(parts) > MAX_DEPTH
        or any(p in ("", ".", "..") for p in parts)
    )
    if bad:
        raise InvalidInput(f"artifact name {name!r} is not a plain relative path; not downloaded")
    return parts


async def list_artifacts(bus: Bus, task_id: str) -> list[Download]:
    """The artifacts the task's events announce (the latest event wins for a path)."""
    events = await replay_events(bus, task_id)
    if not events:
        raise NotFound(
            f"no events for task {task_id} (unknown id, or its events aged out); `taskbus tasks list` shows the known ones", task_id=task_id
        )
    found: dict[str, Download] = {}
    for event in events:
        if isinstance(event, Artifact):
            found[event.path] = Download(path=event.path, size=event.size, sha256=event.sha256, object_key=event.object_key)
    return list(found.values())


def _open_folder(root_fd: int, parts: list[str]) -> int:
    """A descriptor of ``root/parts...``, creating folders, refusing links and non-folders."""
    fd = os.dup(root_fd)
    try:
        for part in parts:
            try:
                os.mkdir(part, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                raise InvalidInput(
                    f"{part!r} under the output folder is a link or not a folder ({exc.strerror}); not writing through it"
                ) from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _exists(root_fd: int, parts: list[str]) -> bool:
    """Does ``parts`` name an existing entry (of any type, links not followed)?"""
    fd = os.dup(root_fd)
    try:
        for part in parts[:-1]:
            try:
                info = os.stat(part, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                return False
            if not stat.S_ISDIR(info.st_mode):
                return True  # a file or link where a folder must go: a conflict
            child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = child
        try:
            os.stat(parts[-1], dir_fd=fd, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return True
    finally:
        os.close(fd)


class _Sink:
    """The file object nats' ``ObjectStore.get(writeinto=)`` writes chunks into."""

    def __init__(self, fd: int, item: Download, progress: Progress | None) -> None:
        self.fd = fd
        self.item = item
        self.progress = progress
        self.written = 0
        self.digest = hashlib.sha256()

    def write(self, data: bytes) -> int:
        if self.written + len(data) > self.item.size:
            raise InvalidInput(f"artifact {self.item.path!r} is larger than its event says ({self.item.size} bytes)")
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]
        self.written += len(data)
        self.digest.update(data)
        if self.progress is not None:
            self.progress(self.item.path, self.written, self.item.size)
        return len(data)


async def download(bus: Bus, task_id: str, out: Path, *, force: bool = False, progress: Progress | None = None) -> list[Download]:
    """Save every artifact of ``task_id`` under ``out``; InvalidInput before writing anything
    when a name is unsafe or (without ``force``) a file exists."""
    items = await list_artifacts(bus, task_id)
    plan = [(item, safe_parts(item.path)) for item in items]
    for item, _ in plan:
        if item.object_key != f"{task_id}/{item.path}":
            raise InvalidInput(f"artifact {item.path!r} points at object {item.object_key!r} of another task")
    out.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 (the CLI's own loop; the file writes below block the same way)
    root_fd = os.open(out, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        if not force:
            taken = [item.path for item, parts in plan if _exists(root_fd, parts)]
            if taken:
                raise InvalidInput(
                    f"{len(taken)} file(s) already exist in {out} (first: {taken[0]}); pass --force to replace them or pick another --out"
                )
        store = await bus.js.object_store(bus.subjects.artifacts_bucket)
        saved = []
        for item, parts in plan:
            await _save(store, root_fd, item, parts, progress)
            saved.append(
                Download(path=item.path, size=item.size, sha256=item.sha256, object_key=item.object_key, saved_to=str(out.joinpath(*parts)))
            )
        logger.info("downloaded %d artifact(s) of %s into %s", len(saved), task_id, out)
        return saved
    finally:
        os.close(root_fd)


async def _save(store: Any, root_fd: int, item: Download, parts: list[str], progress: Progress | None) -> None:
    folder = _open_folder(root_fd, parts[:-1])
    tmp = f".{parts[-1][:100]}.{secrets.token_hex(6)}.part"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644, dir_fd=folder)
        try:
            sink = _Sink(fd, item, progress)
            try:
                info = await store.get_info(item.object_key)
            except Exception as exc:
                raise NotFound(
                    f"artifact {item.path!r} is not in the Object Store ({type(exc).__name__}); it may have been removed"
                ) from None
            if info.size != item.size:
                raise InvalidInput(
                    f"artifact {item.path!r} is {info.size} bytes in the Object Store, its event says {item.size}; not saved"
                )
            await store.get(item.object_key, writeinto=sink)
        finally:
            os.close(fd)
        if sink.written != item.size or sink.digest.hexdigest() != item.sha256:
            raise InvalidInput(f"artifact {item.path!r} does not match its event (size or sha256); not saved")
        try:
            os.replace(tmp, parts[-1], src_dir_fd=folder, dst_dir_fd=folder)
        except OSError as exc:
            raise InvalidInput(f"cannot save artifact {item.path!r}: {exc.strerror}") from None
        tmp = ""
    finally:
        if tmp:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=folder)
        os.close(folder)
