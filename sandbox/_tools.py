"""Locating the external programs sandboxes need (Claude Code CLI, bwrap, docker)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from bus import SandboxUnavailable, Settings

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CLAUDE_INSTALL_HINT = "scripts/setup claude (or: npm install --prefix .tools/claude @anthropic-ai/claude-code)"


def _claude_candidates(settings: Settings) -> list[Path]:
    found = []
    if settings.claude_path:
        found.append(Path(settings.claude_path).expanduser())
    for base in (PROJECT_ROOT, Path.cwd()):
        found.append(base / ".tools" / "claude" / "node_modules" / ".bin" / "claude")
    on_path = shutil.which("claude")
    if on_path:
        found.append(Path(on_path))
    return found


def find_claude(settings: Settings) -> Path:
    """The Claude Code CLI binary (resolved through npm's symlink to the native file)."""
    for path in _claude_candidates(settings):
        if path.is_file() and os.access(path, os.X_OK):
            return path.resolve()
    raise SandboxUnavailable(f"Claude Code CLI not found; install it with `{CLAUDE_INSTALL_HINT}` or set TASKBUS_CLAUDE_PATH")


def find_bwrap() -> Path:
    path = shutil.which("bwrap")
    if not path:
        raise SandboxUnavailable("bubblewrap (bwrap) not found; install it with `apt-get install bubblewrap`")
    return Path(path)
