"""The installed taskbus version, as the CLI, the MCP server and runner heartbeats report it."""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version


def taskbus_version() -> str:
    """The installed distribution's version; ``0+unknown`` when running from a bare checkout."""
    try:
        return version("taskbus")
    except PackageNotFoundError:
        return "0+unknown"
