"""A process says it is ready by writing its pid to a file; ``taskbus up`` polls that file.

The file is written atomically (a private temporary file renamed over it) in the data
dir's ``run`` folder (0700), so a reader sees either no file or a whole pid. The reader
counts it only when the pid is the child it started: a file left by an earlier life of
the process cannot make a restarted one look ready. The writer removes the file when it
stops (best effort; the pid check covers a killed writer).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from bus import private_dir

from ._state import write_atomic

RUN_DIR = "run"


def ready_file_path(data: Path, name: str) -> Path:
    return data / RUN_DIR / f"{name}.ready"


def write_ready_file(path: Path) -> None:
    """Atomically write this process's pid to ``path`` (its folder is made 0700)."""
    private_dir(path.parent, tighten=True)
    write_atomic(path, f"{os.getpid()}\n")


def ready_pid(path: Path) -> int | None:
    """The pid in ``path``; None when there is no such file or it holds no pid."""
    try:
        with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NOFOLLOW)) as fh:
            return int(fh.read(32).strip())
    except (OSError, ValueError):
        return None


def remove_ready_file(path: Path) -> None:
    """Remove ``path`` if it is still this process's."""
    if ready_pid(path) == os.getpid():
        with contextlib.suppress(OSError):
            path.unlink()
