"""A task's workspace on the host: input files in (path-checked), artifacts out.

Input paths must be relative, without ``..``, and may not pass through a symbolic
link. After the run, new and changed regular files (never links) are stored in the
artifacts Object Store under ``<task_id>/<path>``, and text files get a unified diff.
"""

from __future__ import annotations

import difflib
import hashlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from bus import Bus, InputFile, InvalidInput, Settings, check_relative_path, input_file_bytes

logger = logging.getLogger(__name__)

MAX_DIFF_BYTES = 256 * 1024
MAX_DIFF_FILE_BYTES = 512 * 1024
SKIP_DIRS = {".git", "node_modules", "__pycache__", ".claude"}


def write_inputs(workspace: Path, files: list[InputFile], *, max_bytes: int) -> dict[str, bytes]:
    """Write the request's files; returns path -> original bytes (for diffs)."""
    originals: dict[str, bytes] = {}
    for f in files:
        rel = check_relative_path(f.path)
        data = input_file_bytes(f, max_bytes=max_bytes)
        target = workspace.joinpath(*rel.parts)
        parent = workspace
        for part in rel.parts[:-1]:
            parent = parent / part
            if parent.is_symlink():
                raise InvalidInput(f"file path {f.path!r} passes through a link")
            parent.mkdir(exist_ok=True)
        if target.is_symlink() or target.is_dir():
            raise InvalidInput(f"file path {f.path!r} names a link or a folder")
        target.write_bytes(data)
        originals[str(rel)] = data
    return originals


@dataclass(frozen=True)
class FileState:
    size: int
    mtime_ns: int
    sha256: str


def snapshot(workspace: Path) -> dict[str, FileState]:
    """Regular files under ``workspace`` (links are not followed), by relative path."""
    state: dict[str, FileState] = {}
    for root, dirs, files in os.walk(workspace, followlinks=False):
        dirs[:] = [d for d in dirs if d not in SKIP_DIRS and not os.path.islink(os.path.join(root, d))]
        for name in files:
            full = os.path.join(root, name)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if not _is_regular(st.st_mode):
                continue
            rel = os.path.relpath(full, workspace)
            state[rel] = FileState(st.st_size, st.st_mtime_ns, _sha256(full))
    return state


def _is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def _sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


async def store_artifacts(
    bus: Bus,
    settings: Settings,
    task_id: str,
    workspace: Path,
    before: dict[str, FileState],
    originals: dict[str, bytes],
    emit,  # type: ignore[no-untyped-def]
) -> str | None:
    """Store new and changed files, emit an ``artifact`` event each; return the diff."""
    after = snapshot(workspace)
    changed = sorted(p for p, st in after.items() if p not in before or before[p].sha256 != st.sha256)
    if not changed:
        return None
    store = await bus.js.object_store(bus.subjects.artifacts_bucket)
    diffs: list[str] = []
    diff_size = 0
    stored = 0
    for rel in changed:
        state = after[rel]
        if stored >= settings.artifact_max_files:
            await emit("log", line=f"artifact limit of {settings.artifact_max_files} files reached; {rel} and later files not stored")
            break
        if state.size > settings.artifact_max_bytes:
            await emit("log", line=f"{rel} is {state.size} bytes, over the artifact limit of {settings.artifact_max_bytes}; not stored")
            continue
        data = (workspace / rel).read_bytes()
        key = f"{task_id}/{rel}"
        await store.put(key, data)
        stored += 1
        change = "modified" if rel in before else "added"
        await emit("artifact", path=rel, size=len(data), sha256=state.sha256, object_key=key, change=change)
        if diff_size < MAX_DIFF_BYTES and len(data) <= MAX_DIFF_FILE_BYTES:
            text = _diff(rel, originals.get(rel) if rel in before else b"", data, added=rel not in before)
            if text:
                diffs.append(text)
                diff_size += len(text)
    return "".join(diffs)[:MAX_DIFF_BYTES] or None


def _diff(rel: str, old: bytes | None, new: bytes, *, added: bool) -> str:
    if old is None:
        return ""  # changed but we never had its old content (a project file): no diff
    try:
        old_text, new_text = old.decode(), new.decode()
    except UnicodeDecodeError:
        return f"Binary file {rel} {'added' if added else 'changed'}\n"
    return "".join(
        difflib.unified_diff(
            old_text.splitlines(keepends=True),
            new_text.splitlines(keepends=True),
            fromfile="/dev/null" if added else f"a/{rel}",
            tofile=f"b/{rel}",
        )
    )
