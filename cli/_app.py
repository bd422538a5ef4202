"""The ``taskbus`` command (composition root). Commands are thin: parse, settings, run, render.

Each group lives in its own ``cli/_<group>.py`` module with a ``register(app)`` function.
"""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from bus import EmbeddedNats, TaskbusError, json_schemas, taskbus_version

from . import _audit, _catalog, _migrate, _model, _profiles, _runner, _sandbox, _stack, _tasks
from ._common import ConfigOpt, JsonOpt, fail, load_settings, out, print_json, setup_logging
from ._doctor import render, run_checks

app = typer.Typer(
    name="taskbus",
    help="Claude as a safe, metered, auditable tool: MCP server, NATS bus, sandboxed runners, audit log.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    add_completion=False,
)

# Command groups, each registered by its own module, in the order `taskbus --help` lists them.
_GROUPS = (_model, _sandbox, _profiles, _runner, _tasks, _audit, _stack, _catalog, _migrate)


def _version_callback(value: bool) -> None:
    if value:
        out.print(f"taskbus {taskbus_version()}")
        raise typer.Exit()


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version_callback, is_eager=True, help="Show the version and exit.")
    ] = False,
    log_level: Annotated[str, typer.Option("--log-level", envvar="TASKBUS_LOG_LEVEL", help="debug, info, warning or error.")] = "info",
    log_format: Annotated[str, typer.Option("--log-format", help="rich (human, stderr) or json (one object per line).")] = "rich",
) -> None:
    if log_format not in ("rich", "json"):
        fail("--log-format must be rich or json", code=2)
    setup_logging(log_level, log_format)


@app.command()
def schema(
    out_dir: Annotated[Path | None, typer.Option("--out", help="Write one <Type>.json per message into this folder.")] = None,
) -> None:
    """JSON Schema of every public bus message (generated from the msgspec Structs)."""
    schemas = json_schemas()
    if out_dir is None:
        print_json(schemas)
        return
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, document in schemas.items():
        (out_dir / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")
    out.print(f"wrote {len(schemas)} schemas to {out_dir}")


@app.command()
def nats(
    port: Annotated[int, typer.Option(help="Port (0 = 4222).")] = 4222,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    config: ConfigOpt = None,
) -> None:
    """Run the embedded nats-server (JetStream in the data dir) in the foreground."""
    settings = load_settings(config, discover=False)
    store = settings.data_path / "nats"
    server = EmbeddedNats(store, host=host, port=port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        server.start()
    except TaskbusError as exc:
        fail(exc.describe())
    out.print(f"nats-server on {server.url}, JetStream in {store}; Ctrl-C stops it")
    try:
        while not stop.is_set() and server.process and server.process.poll() is None:
            stop.wait(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


@app.command()
def doctor(json_output: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Check what taskbus needs on this machine and say how to fix what is missing."""
    settings = load_settings(config)
    checks = run_checks(settings)
    if json_output:
        print_json({"ok": all(c.ok or not c.required for c in checks), "checks": checks})
    else:
        render(checks)


for _group in _GROUPS:
    _group.register(app)


def main() -> None:
    app(prog_name="taskbus")


if __name__ == "__main__":
    main()
