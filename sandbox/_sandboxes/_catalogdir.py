"""The host folder of a sandbox's catalog agents and skills, bound read-only into it.

Every sandbox (bwrap, Docker pooled or not) has ``<sandbox folder>/catalog/agents``
and ``.../skills``, bound read-only at ``~/.claude/agents`` and ``~/.claude/skills``
on top of a tmpfs at ``~/.claude`` (itself a mount point). The agent owns its home,
but it cannot remove, rename or replace a mount point (EBUSY), and the content of a
read-only bind cannot change (EROFS). The runner writes the task's entries there on
the host (``fill_catalog``) before anything of the task runs; a pooled Docker
container gets the same two (then empty) binds when it is created, filled when a
task takes its slot. A root runner makes the files root-owned 0444 and the folders
0555.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path, PurePosixPath

from ._spec import CLAUDE_DIR

CATALOG_DIRS = ("agents", "skills")


def _locked_mode(mode: int) -> int:
    # A non-root runner must still be able to remove what it wrote (the reaper, destroy).
    return mode if os.geteuid() == 0 else mode | 0o200


def make_catalog_dirs(folder: Path) -> Path:
    """``folder/catalog/{agents,skills}``, empty; returns ``folder/catalog``."""
    root = folder / "catalog"
    root.mkdir(mode=0o755)
    for name in CATALOG_DIRS:
        (root / name).mkdir(mode=0o755)
        os.chmod(root / name, _locked_mode(0o555))
    return root


def catalog_binds(root: Path) -> list[tuple[str, str]]:
    """(host folder, sandbox path) of the two read-only binds."""
    return [(str(root / name), f"{CLAUDE_DIR}/{name}") for name in CATALOG_DIRS]


def fill_catalog(root: Path, files: dict[str, bytes]) -> None:
    """Write ``files`` (paths relative to ~/.claude: ``agents/<name>.md``,
    ``skills/<name>/<path>``) under ``root``: files 0444, folders 0555. Nothing inside a
    sandbox can write there, so plain creation with O_EXCL|O_NOFOLLOW is enough."""
    if not files:
        return
    made: list[Path] = []
    for name in CATALOG_DIRS:
        os.chmod(root / name, 0o755)
        made.append(root / name)
    try:
        for rel, content in sorted(files.items()):
            parts = PurePosixPath(rel).parts
            parent = root
            for part in parts[:-1]:
                parent = parent / part
                if not parent.is_dir():
                    parent.mkdir(mode=0o755)
                    made.append(parent)
            fd = os.open(parent / parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o444)
            try:
                os.write(fd, content)
                os.fchmod(fd, 0o444)
            finally:
                os.close(fd)
    finally:
        for path in reversed(made):
            os.chmod(path, _locked_mode(0o555))


def empty_catalog(root: Path) -> None:
    """Remove everything under the two folders; the folders themselves stay (they are
    the mount sources of a live container)."""
    for name in CATALOG_DIRS:
        top = root / name
        if not top.is_dir():
            continue
        os.chmod(top, 0o755)
        for entry in list(top.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                for sub, dirs, _ in os.walk(entry):
                    os.chmod(sub, 0o755)
                    for d in dirs:
                        os.chmod(os.path.join(sub, d), 0o755)
                shutil.rmtree(entry)
            else:
                entry.unlink()
        os.chmod(top, _locked_mode(0o555))
