"""``taskbus model``: the scripted model server (offline demo, tests, benchmarks)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Coroutine
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bus import TaskbusError

from ._common import JsonOpt, fail, out, print_json

model_app = typer.Typer(
    name="model",
    help="The scripted model server: a local Anthropic Messages API driven by a script.",
    no_args_is_help=True,
)

# `sandbox` is imported inside the commands that use it: the rest of the CLI never loads
# the sandbox package (+0.2 s start-up).


async def _serve(script: str | None, host: str, port: int, log: Path | None, key: str | None) -> None:
    from sandbox import ScriptedModelServer  # noqa: PLC0415 (lazy, see the top)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with ScriptedModelServer(script, host=host, port=port, log_path=log, required_api_key=key) as server:
        assert server.app is not None
        out.print(
            f"scripted model on {server.url} (script {server.app.script.name}"
            f"{', API key required' if key else ''}{f', log {log}' if log else ''}); Ctrl-C stops it"
        )
        await stop.wait()


@model_app.command("serve")
def serve(
    script: Annotated[
        str | None,
        typer.Option("--script", help="A shipped script name (`taskbus model scripts`) or a .toml/.json file; none = echo."),
    ] = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port (0 = pick a free one).", min=0, max=65535)] = 8088,
    log: Annotated[Path | None, typer.Option("--log", help="Append one JSON line per request to this file.")] = None,
    require_key: Annotated[
        str | None,
        typer.Option(
            "--require-key",
            envvar="TASKBUS_MODEL_REQUIRE_KEY",
            help="Answer 401 unless requests carry this API key (x-api-key or Bearer).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Serve the Anthropic Messages API from a script (JSON, SSE streaming, count_tokens, models)."""
    from sandbox import resolve_script  # noqa: PLC0415 (lazy, see the top)

    try:
        if script is not None:
            resolve_script(script)  # fail fast with the line/field of a bad script
    except TaskbusError as exc:
        fail(exc.describe())
    try:
        _run_uvloop(_serve(script, host, port, log, require_key))
    except TaskbusError as exc:
        fail(exc.describe())
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror}; pick another --port")


def _run_uvloop(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # noqa: PLC0415 (optional: the uvloop dependency is not installed on Windows)
    except ImportError:
        asyncio.run(coro)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(coro)


@model_app.command("scripts")
def scripts(json_output: JsonOpt = False) -> None:
    """List the model scripts shipped with taskbus."""
    from sandbox import load_script, shipped_scripts  # noqa: PLC0415 (lazy, see the top)

    rows: list[dict[str, Any]] = []
    for name, path in shipped_scripts().items():
        try:
            script = load_script(path)
            rows.append({"name": name, "turns": len(script.turns), "description": script.description, "path": str(path)})
        except TaskbusError as exc:
            rows.append({"name": name, "turns": 0, "description": f"BROKEN: {exc.describe()}", "path": str(path)})
    if json_output:
        print_json(rows)
        return
    table = Table("name", "turns", "description")
    for row in rows:
        table.add_row(row["name"], str(row["turns"]), row["description"])
    out.print(table)


def register(app: typer.Typer) -> None:
    app.add_typer(model_app, name="model")
