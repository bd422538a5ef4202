"""The operator console at ``/console`` on the server's HTTP port (issue #19): server-rendered
pages, a session cookie, CSRF tokens, everything escaped. See docs/console.md."""

from __future__ import annotations

from bus import Settings

from ._app import Console as Console

LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


def console_enabled(settings: Settings, host: str) -> bool:
    """``console = "auto"`` serves it on loopback only; ``on`` everywhere; ``off`` never."""
    mode = getattr(settings, "console", "auto")
    return mode == "on" or (mode == "auto" and host in LOOPBACK)


__all__ = ["Console", "console_enabled"]
