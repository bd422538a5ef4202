"""A task's workspace on the host: input files in, artifacts out.

Input paths must be relative, without ``..``; they are created through directory fds
(``O_NOFOLLOW | O_EXCL``) before the sandbox exists. Artifacts are collected after
every process of the sandbox is gone, with ``_safefs``: a bounded walk (links and
special files are never opened), then each new or changed regular file is read,
hashed and stored from one no-follow fd checked to be the inode the walk saw. A
link, FIFO, socket or device where a file was, or a file swapped after the walk, is
refused with a ``security`` event (``artifact_refused``). All file work runs in
threads, bounded by the ``artifact_*`` settings, and stops when the task's time ends.
"""

from __future__ import annotations

import asyncio
import difflib
import hashlib
import logging
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bus import Artifact, Bus, InputFile, Log, Security, Settings, check_relative_path, input_file_bytes

from . import _safefs

logger = logging.getLogger(__name__)

MAX_DIFF_BYTES = 256 * 1024
MAX_DIFF_FILE_BYTES = 512 * 1024
MAX_REFUSED_EVENTS = 20
MAX_SKIP_LINES = 20
SKIP_DIRS = {".git", "node_modules", "__pycache__", ".claude"}

Emit = Callable[..., Awaitable[object]]
"""Publishes one event of the task: ``emit(EventClass, **fields)`` (``TaskEvents.emit``)."""


def write_inputs(workspace: Path, files: list[InputFile], *, max_bytes: int) -> dict[str, bytes]:
    """Write the request's files; returns path -> original bytes (for diffs)."""
    originals: dict[str, bytes] = {}
    for f in files:
        rel = str(check_relative_path(f.path))
        data = input_file_bytes(f, max_bytes=max_bytes)
        _safefs.write_new_file(workspace, rel, data)
        originals[rel] = data
    return originals


@dataclass(frozen=True)
class FileState:
    size: int
    sha256: str


def snapshot(originals: dict[str, bytes]) -> dict[str, FileState]:
    """The "before" state: exactly the input files the runner wrote (nothing else was there)."""
    return {rel: FileState(len(data), hashlib.sha256(data).hexdigest()) for rel, data in originals.items()}


async def store_artifacts(
    bus: Bus,
    settings: Settings,
    task_id: str,
    workspace: Path,
    before: dict[str, FileState],
    originals: dict[str, bytes],
    emit: Emit,
) -> str | None:
    """Store new and changed files, emit an ``artifact`` event each; return the diff.
    Call it only when nothing runs in the sandbox any more; cancel it to stop it."""
    stop = threading.Event()
    try:
        return await _collect(bus, settings, task_id, workspace, before, originals, emit, stop)
    finally:
        stop.set()  # a thread still running when we are cancelled ends at its next chunk


async def _collect(
    bus: Bus,
    settings: Settings,
    task_id: str,
    workspace: Path,
    before: dict[str, FileState],
    originals: dict[str, bytes],
    emit: Emit,
    stop: threading.Event,
) -> str | None:
    seen = await asyncio.to_thread(_safefs.walk, workspace, skip_dirs=SKIP_DIRS, max_entries=settings.workspace_max_entries, stop=stop)
    if seen.truncated:
        await emit(Log, line=f"the workspace has over {settings.workspace_max_entries} entries; the rest was not looked at")
    refused = [f"{rel}: a {kind} in the workspace; not read" for rel, kind in seen.special]
    refused += [f"{rel}: a link to outside the workspace; not followed" for rel, outside in seen.links if outside]
    for detail in refused[:MAX_REFUSED_EVENTS]:
        await emit(Security, kind="artifact_refused", severity="warning", detail=detail)
    if len(refused) > MAX_REFUSED_EVENTS:
        await emit(
            Security,
            kind="artifact_refused",
            severity="warning",
            detail=f"{len(refused) - MAX_REFUSED_EVENTS} more links or special files in the workspace; not read",
        )
    inside = [rel for rel, outside in seen.links if not outside]
    if inside:
        await emit(Log, line=f"{len(inside)} link(s) inside the workspace not stored (links are never stored), e.g. {inside[0]}")
    store: Any = None
    diffs: list[str] = []
    skipped: list[str] = []
    diff_size = stored = total = 0
    for rel in sorted(seen.files):
        entry = seen.files[rel]
        old = before.get(rel)
        if stored >= settings.artifact_max_files:
            skipped.append(f"artifact limit of {settings.artifact_max_files} files reached; {rel} and later files not stored")
            break
        if entry.size > settings.artifact_max_bytes:
            skipped.append(f"{rel} is {entry.size} bytes, over the artifact limit of {settings.artifact_max_bytes}; not stored")
            continue
        if total + entry.size > settings.artifact_max_total_bytes:
            skipped.append(f"{rel} would pass the total artifact limit of {settings.artifact_max_total_bytes} bytes; not stored")
            continue
        try:
            data, sha = await asyncio.to_thread(_safefs.read_file, workspace, rel, entry, max_bytes=settings.artifact_max_bytes, stop=stop)
        except _safefs.Refused as exc:
            await emit(Security, kind="artifact_refused", severity="critical", detail=f"{rel}: {exc}; not stored")
            continue
        if old is not None and old.sha256 == sha:
            continue
        total += len(data)
        if store is None:
            store = await bus.js.object_store(bus.subjects.artifacts_bucket)
        key = f"{task_id}/{rel}"
        await store.put(key, data)
        stored += 1
        await emit(Artifact, path=rel, size=len(data), sha256=sha, object_key=key, change="modified" if old else "added")
        if diff_size < MAX_DIFF_BYTES and len(data) <= MAX_DIFF_FILE_BYTES:
            # difflib is quadratic at worst: not on the event loop
            text = await asyncio.to_thread(_diff, rel, originals.get(rel) if old else b"", data, added=old is None)
            if text:
                diffs.append(text)
                diff_size += len(text)
    for line in skipped[:MAX_SKIP_LINES]:
        await emit(Log, line=line)
    if len(skipped) > MAX_SKIP_LINES:
        await emit(Log, line=f"... and {len(skipped) - MAX_SKIP_LINES} more files not stored")
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
