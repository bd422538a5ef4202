"""Reading an agent file or a skill folder from the operator's disk into catalog bundles.

Nothing is followed: a symlink, a FIFO, a device or a socket anywhere is refused, as is
anything over the size limits (checked while reading, so a huge or growing file is never
read whole). The result is validated (``bus.validate_bundle``) before anything is stored.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from bus import SKILL_FILE, CatalogBundle, CatalogLimits, InvalidInput, make_bundle, parse_frontmatter, validate_bundle

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK


def _read_at(dir_fd: int | None, name: str, shown: str, limits: CatalogLimits) -> bytes:
    try:
        fd = os.open(name, _FILE_FLAGS, dir_fd=dir_fd)
    except OSError as exc:
        raise InvalidInput(f"{shown}: cannot open it without following links ({exc.strerror}): add only regular files") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInput(f"{shown}: not a regular file (links, FIFOs, devices and sockets are refused)")
        if info.st_size > limits.max_file_bytes:
            raise InvalidInput(f"{shown}: {info.st_size} bytes, over the limit of {limits.max_file_bytes} (TASKBUS_CATALOG_MAX_FILE_BYTES)")
        chunks, total = [], 0
        while chunk := os.read(fd, 65536):
            total += len(chunk)
            if total > limits.max_file_bytes:
                raise InvalidInput(f"{shown}: over the limit of {limits.max_file_bytes} bytes (TASKBUS_CATALOG_MAX_FILE_BYTES)")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _frontmatter_name(data: bytes, shown: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{shown}: not UTF-8 text") from None
    fields, _ = parse_frontmatter(text, where=shown)
    name = fields.get("name", "")
    if not name:
        raise InvalidInput(f"{shown}: its frontmatter needs a 'name'")
    return name


def _lstat_kind(path: Path) -> str:
    try:
        mode = os.lstat(path).st_mode
    except OSError as exc:
        raise InvalidInput(f"{path}: {exc.strerror}") from None
    if stat.S_ISLNK(mode):
        raise InvalidInput(f"{path}: is a symbolic link; give the real file or folder")
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    raise InvalidInput(f"{path}: not a regular file or folder")


def read_agents(path: Path, limits: CatalogLimits) -> list[CatalogBundle]:
    """An agent Markdown file, or every ``*.md`` directly in a folder (all or nothing)."""
    if _lstat_kind(path) == "file":
        names: list[tuple[Path | None, str, str]] = [(None, str(path), str(path))]
    else:
        fd = os.open(path, _DIR_FLAGS)
        try:
            found = sorted(e.name for e in os.scandir(fd) if e.name.endswith(".md"))
        finally:
            os.close(fd)
        if not found:
            raise InvalidInput(f"{path}: no agent files (*.md) in this folder")
        names = [(path, n, str(path / n)) for n in found]
    bundles = []
    for folder, name, shown in names:
        if folder is None:
            data = _read_at(None, name, shown, limits)
        else:
            dfd = os.open(folder, _DIR_FLAGS)
            try:
                data = _read_at(dfd, name, shown, limits)
            finally:
                os.close(dfd)
        agent = _frontmatter_name(data, shown)
        bundle = make_bundle("agent", agent, {f"{agent}.md": data})
        validate_bundle(bundle, limits)
        bundles.append(bundle)
    seen = [b.name for b in bundles]
    if len(set(seen)) != len(seen):
        raise InvalidInput(f"{path}: two files declare the same agent name")
    return bundles


def _walk(dir_fd: int, prefix: str, shown: str, limits: CatalogLimits, files: dict[str, bytes], count: list[int]) -> None:
    for entry in sorted(os.scandir(dir_fd), key=lambda e: e.name):
        rel = f"{prefix}{entry.name}"
        count[0] += 1
        if count[0] > limits.max_files:
            raise InvalidInput(f"{shown}: more than {limits.max_files} files and folders (TASKBUS_CATALOG_MAX_FILES)")
        mode = entry.stat(follow_symlinks=False).st_mode
        if stat.S_ISDIR(mode):
            child = os.open(entry.name, _DIR_FLAGS, dir_fd=dir_fd)
            try:
                _walk(child, rel + "/", shown, limits, files, count)
            finally:
                os.close(child)
        elif stat.S_ISREG(mode):
            files[rel] = _read_at(dir_fd, entry.name, f"{shown}/{rel}", limits)
            if sum(len(d) for d in files.values()) > limits.max_entry_bytes:
                raise InvalidInput(f"{shown}: over {limits.max_entry_bytes} bytes in all (TASKBUS_CATALOG_MAX_ENTRY_BYTES)")
        else:
            what = "a symbolic link" if stat.S_ISLNK(mode) else "not a regular file or folder"
            raise InvalidInput(f"{shown}/{rel}: {what}; a skill holds only regular files and folders")


def read_skill(path: Path, limits: CatalogLimits) -> CatalogBundle:
    """A skill folder (or its SKILL.md): every file under it, named by SKILL.md's frontmatter."""
    if _lstat_kind(path) == "file":
        if path.name != SKILL_FILE:
            raise InvalidInput(f"{path}: a skill is a folder with a {SKILL_FILE}; give the folder")
        path = path.parent
        _lstat_kind(path)
    files: dict[str, bytes] = {}
    fd = os.open(path, _DIR_FLAGS)
    try:
        _walk(fd, "", str(path), limits, files, [0])
    finally:
        os.close(fd)
    if SKILL_FILE not in files:
        raise InvalidInput(f"{path}: no {SKILL_FILE} at the top of the folder")
    name = _frontmatter_name(files[SKILL_FILE], f"{path}/{SKILL_FILE}")
    bundle = make_bundle("skill", name, files)
    validate_bundle(bundle, limits)
    return bundle
