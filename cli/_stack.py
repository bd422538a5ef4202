"""``taskbus up|down|status|demo|config-reference``: the stack on one machine, for newcomers."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from bus import TaskbusError, first_error
from profiles import publish_notices

from ._common import ConfigOpt, JsonOpt, err, fail, load_settings, out, print_json, run
from ._up import (
    StatusBoard,
    connect_help,
    demo_against,
    make_plan,
    pid_alive,
    prepare,
    read_state,
    render_reference,
    run_stack,
    running_pid,
    spawn_detached,
    stop_leftovers,
    taskbus_command,
    up_runner_id,
    update_file,
)
from ._up import check as run_check
from ._up._configdoc import current_section
from ._up._firstrun import NEW_KEY_HINT
from ._up._plan import choose_backend
from ._up._sandbox import ensure_sandbox
from ._up._state import remove_files, stack_settings


def register(app: typer.Typer) -> None:
    app.command("up")(up)
    app.command("down")(down)
    app.command("status")(status)
    app.command("demo")(demo)
    app.command("config-reference")(config_reference)


def _quiet_clients() -> None:
    """The demo's HTTP client logs every request at INFO; keep the terminal for the demo."""
    for name in ("httpx2", "mcp.client", "httpcore2"):
        logging.getLogger(name).setLevel(max(logging.WARNING, logging.getLogger().level))


def up(
    detach: Annotated[
        bool,
        typer.Option("--detach", "-d", help="Run in the background: pid file and logs under <data dir>/logs; `taskbus down` stops it."),
    ] = False,
    backend: Annotated[
        str | None,
        typer.Option(
            "--backend",
            help="bwrap or docker (default: TASKBUS_SANDBOX_BACKEND, else bwrap if installed, else docker).",
            show_default=False,
        ),
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", envvar="TASKBUS_HTTP_PORT", help="MCP HTTP port (default 8765).", show_default=False)
    ] = None,
    nats_port: Annotated[int, typer.Option("--nats-port", help="Embedded NATS port; taken or 0 = a free one.")] = 4222,
    check: Annotated[
        bool,
        typer.Option("--check", help="Start, run the demo once, stop; exit 0 only if the task succeeded and the audit chain verifies."),
    ] = False,
    runner_id: Annotated[str | None, typer.Option("--runner-id", help="Runner id (default up-<host>).", show_default=False)] = None,
    config: ConfigOpt = None,
    daemon: Annotated[bool, typer.Option("--daemon", hidden=True)] = False,
) -> None:
    """Start the whole stack here: NATS, the offline model (if no real one), audit, a runner, the MCP server."""
    if backend not in (None, "bwrap", "docker"):
        fail("--backend must be bwrap or docker", code=2)
    settings = load_settings(config, discover=False)
    data = settings.data_path.resolve()
    pid = running_pid(data)
    if pid is not None and pid != os.getpid():
        fail(f"taskbus up is already running for {data} (pid {pid}); `taskbus status` shows it, `taskbus down` stops it")
    if not daemon:
        if left := stop_leftovers(data):
            err.print(f"stopped {left} process(es) left running by a previous taskbus up that did not stop cleanly", highlight=False)
        remove_files(data)  # stale pid and state files of a taskbus up that is gone
    env = dict(os.environ)
    first = run(prepare(settings, runner_id=up_runner_id(runner_id)))
    if first.imported is not None:
        counts = ", ".join(f"{n} {kind}" for kind, n in first.imported.imported.items()) or "nothing"
        err.print(
            f"imported the old {first.imported.source} into the control plane on NATS: {counts} "
            "(the file is left as it was; `taskbus migrate --json` shows the full report)",
            highlight=False,
            markup=False,
        )
    if first.admin_key:
        _show_admin_key(first.admin_key, first.admin_prefix)
    elif not daemon:
        err.print(
            f"admin key {first.admin_prefix}... was shown at first start; make another with `{NEW_KEY_HINT}`", highlight=False, markup=False
        )
    if detach and not daemon:
        try:  # the daemon checks again; building here shows the progress
            ensure_sandbox(settings, choose_backend(settings, backend, env), err if err.is_terminal else None)
        except TaskbusError as exc:
            fail(exc.describe())
        argv = [*taskbus_command(), "up", "--daemon", "--nats-port", str(nats_port)]
        for flag, value in (("--backend", backend), ("--port", port), ("--runner-id", runner_id), ("--config", config)):
            if value is not None:
                argv += [flag, str(value)]
        try:
            state = spawn_detached(argv, env, data)
        except TaskbusError as exc:
            fail(exc.describe())
        if first.notices:
            run(publish_notices(stack_settings(settings, state), first.notices))
        _summary(state)
        err.print(
            f"running in the background (pid {state['pid']}); logs in {data / 'logs'}; `taskbus status` shows it, `taskbus down` stops it",
            highlight=False,
        )
        return
    try:
        plan = make_plan(settings, env, backend=backend, nats_port=nats_port, http_port=port, runner_id=runner_id)
    except TaskbusError as exc:
        fail(exc.describe())
    if check:
        _quiet_clients()
        result = run(run_check(plan, first, out))
        verdict = "[green]check passed[/green]" if result.ok else "[red]check FAILED[/red]"
        out.print(
            f"{verdict}: task {result.task_id} {result.status}, {result.artifacts} artifact(s), "
            f"{result.audit_rows} audit rows, chain {'ok' if result.audit_ok else 'NOT ok'}",
            highlight=False,
        )
        raise typer.Exit(0 if result.ok else 1)
    console = err if err.is_terminal and not daemon else None
    run(run_stack(plan, first, console=console))


def _show_admin_key(key: str, prefix: str) -> None:
    err.print(
        "[bold]First start:[/bold] created the admin key below. It is shown ONCE and stored only as a hash; "
        "copy it now (clients send it as `Authorization: Bearer <key>`).",
        highlight=False,
    )
    out.print(f"[bold green]{key}[/bold green]", highlight=False)


def _summary(state: dict[str, Any]) -> None:
    model = (
        "offline scripted model (set ANTHROPIC_API_KEY or TASKBUS_UPSTREAM_URL for a real one)"
        if state["offline_model"]
        else state["upstream"]
    )
    err.print(
        f"MCP (Streamable HTTP): {state['mcp_url']}\nNATS: {state['nats_url']}\nmodel: {model}\nbackend: {state['backend']}",
        highlight=False,
        markup=False,
    )


def down(
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait for a clean stop before SIGKILL.")] = 90.0,
    config: ConfigOpt = None,
) -> None:
    """Stop a `taskbus up` running for this data dir (e.g. one started with --detach)."""
    data = load_settings(config).data_path.resolve()
    pid = running_pid(data)
    if pid is None:
        left = stop_leftovers(data)
        remove_files(data)
        out.print(f"taskbus up is not running for {data}" + (f"; stopped {left} leftover process(es)" if left else ""))
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if pid_alive(pid):
        os.killpg(pid, signal.SIGKILL) if _is_leader(pid) else os.kill(pid, signal.SIGKILL)
        fail(f"taskbus up (pid {pid}) did not stop within {timeout:.0f}s and was killed; children may remain: see {data / 'logs'}")
    out.print(f"stopped taskbus up (pid {pid})")


def _is_leader(pid: int) -> bool:
    try:
        return os.getpgid(pid) == pid
    except ProcessLookupError:
        return False


def status(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="A live panel until Ctrl-C (runner slots, recent tasks).")] = False,
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Where a running `taskbus up` listens and what its processes are doing."""
    data = load_settings(config).data_path.resolve()
    state = read_state(data) if running_pid(data) else None
    if state is None:
        if json_output:
            print_json({"running": False})
            raise typer.Exit(1)
        fail(f"taskbus up is not running for {data}; start it with `taskbus up` (or scripts/up)")
    if json_output:
        print_json({"running": True, **state})
        return
    if follow:
        run(_follow(data, state))
        return
    _summary(state)
    table = Table("process", "pid", "state", "restarts", "what")
    for child in state["children"]:
        table.add_row(child["name"], str(child["pid"] or "-"), child["state"], str(child["restarts"]), child["label"])
    out.print(table)


async def _follow(data: Path, state: dict[str, Any]) -> None:
    def children() -> list[dict[str, Any]]:
        return (read_state(data) or {"children": []})["children"]

    board = StatusBoard(state, children)
    board.ready = bool(state.get("ready"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)

    async def until_gone() -> None:
        while not stop.is_set():
            if read_state(data) is None:
                stop.set()
            await asyncio.sleep(0.5)

    with Live(board.render(), console=err, refresh_per_second=2, get_renderable=board.render):
        async with asyncio.TaskGroup() as tg:
            tg.create_task(board.follow(stop))
            tg.create_task(until_gone())


def demo(config: ConfigOpt = None) -> None:
    """Run the demo task against the running `taskbus up` (a real MCP client over HTTP)."""
    settings = load_settings(config)
    data = settings.data_path.resolve()
    state = read_state(data) if running_pid(data) else None
    if not state or not state.get("ready"):
        fail(f"taskbus up is not running (ready) for {data}; start it first: `taskbus up --detach`")
    _quiet_clients()
    result = _run_unwrapped(demo_against(settings, state, out))
    out.print()
    out.print(connect_help(state["mcp_url"], state["nats_url"], taskbus_command()[0], state["data_dir"]), highlight=False, markup=False)
    raise typer.Exit(0 if result.ok else 1)


def _run_unwrapped(coro: Any) -> Any:
    try:
        return run(coro)
    except BaseExceptionGroup as group:
        inner = first_error(group)
        if isinstance(inner, TaskbusError):
            fail(inner.describe())
        if isinstance(inner, OSError | ConnectionError):
            fail(f"cannot reach the MCP server: {inner}; is `taskbus up` running? (`taskbus status`)")
        raise


def config_reference(
    update: Annotated[
        Path | None, typer.Option("--update", help="Rewrite the marked section of this file (README.md).", show_default=False)
    ] = None,
    check_file: Annotated[
        Path | None, typer.Option("--check", help="Exit 1 if this file's section is out of date.", show_default=False)
    ] = None,
) -> None:
    """Every TASKBUS_* setting as a Markdown table, generated from Settings."""
    if update is not None:
        try:
            changed = update_file(update)
        except ValueError as exc:
            fail(str(exc))
        out.print(f"{update}: {'updated' if changed else 'already up to date'}")
        return
    if check_file is not None:
        try:
            current = current_section(check_file.read_text())
        except IndexError:
            fail(f"{check_file} has no configuration reference markers")
        if current != render_reference():
            fail(f"{check_file}: the configuration reference is out of date; run `taskbus config-reference --update {check_file}`")
        out.print(f"{check_file}: up to date")
        return
    out.print(render_reference(), markup=False, highlight=False, soft_wrap=True)
