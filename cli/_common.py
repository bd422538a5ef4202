"""What every CLI command shares: settings, logging, errors, JSON output."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from collections.abc import Coroutine
from typing import Annotated, Any, NoReturn, TypeVar

import msgspec
import typer
from rich.console import Console
from rich.logging import RichHandler

from bus import Settings, TaskbusError, first_error

from ._up._state import read_state, running_pid, stack_settings

T = TypeVar("T")

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")]
ConfigOpt = Annotated[
    str | None,
    typer.Option("--config", envvar="TASKBUS_CONFIG", help="Path to taskbus.toml.", show_default=False),
]


def fail(message: str, code: int = 1) -> NoReturn:
    """One red line on stderr saying what is wrong and what to do, then exit."""
    err.print(f"[red]error:[/red] {message}", markup=True, highlight=False)
    raise typer.Exit(code)


def load_settings(config: str | None = None, *, discover: bool = True, nats_role: str = "cli", **overrides: Any) -> Settings:
    """Settings from taskbus.toml and TASKBUS_* variables. With ``discover`` (every command
    but ``taskbus up``), a ``taskbus up`` running on the same data dir provides the NATS URL
    (TASKBUS_NATS_URL still wins) and the credentials of ``nats_role`` from the data dir."""
    try:
        settings = Settings.load(toml_path=config, **overrides)
    except TaskbusError as exc:
        fail(f"configuration: {exc.describe()}")
    return discover_stack(settings, role=nats_role) if discover else settings


def discover_stack(settings: Settings, *, role: str = "cli") -> Settings:
    """``settings`` pointed at the ``taskbus up`` of its data dir, when one runs and the
    NATS URL is unset (or is that stack's). Unchanged otherwise."""
    data = settings.data_path.resolve()
    state = read_state(data) if running_pid(data) else None
    if not state or not state.get("nats_url"):
        return settings
    if settings.nats_url and settings.nats_url != state["nats_url"]:
        return settings  # TASKBUS_NATS_URL wins: another NATS, its own credentials
    return stack_settings(settings, state, role=role)


def run(coro: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` that turns expected errors (also from inside a task group) into one
    clear line and exit 1."""
    try:
        return asyncio.run(coro)
    except TaskbusError as exc:
        fail(exc.describe())
    except BaseExceptionGroup as group:
        inner = first_error(group)
        if isinstance(inner, TaskbusError):
            fail(inner.describe())
        raise
    except KeyboardInterrupt:
        err.print("interrupted")
        raise typer.Exit(130) from None


def print_json(document: Any) -> None:
    """Exactly one JSON document on stdout."""
    document = msgspec.to_builtins(document, enc_hook=str)
    sys.stdout.write(json.dumps(document, indent=2, default=str) + "\n")
    sys.stdout.flush()


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str = "info", fmt: str = "rich") -> None:
    root = logging.getLogger()
    root.handlers.clear()
    if fmt == "json":
        handler: logging.Handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonFormatter())
    else:
        handler = RichHandler(console=err, show_path=False, rich_tracebacks=False, markup=False)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for noisy in ("nats", "httpx", "httpcore", "httpx2", "httpcore2", "uvicorn.access", "docker", "urllib3"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
