"""``taskbus audit``: run the audit writer; tail, search, verify, export and prune the log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.table import Table
from rich.text import Text

from audit import (
    AuditError,
    LiveFilter,
    PruneResult,
    default_db_path,
    export_jsonl,
    follow,
    open_db,
    parse_time,
    prune,
    run_audit,
    search,
    summarize,
    tail,
    verify,
)
from bus import Bus, Settings, TaskbusError, parse_duration

from ._common import (
    ConfigOpt,
    JsonOpt,
    err,
    fail,
    load_settings,
    out,
    print_json,
    run,
)
from ._up._readyfile import remove_ready_file, write_ready_file

T = TypeVar("T")

DbOpt = Annotated[
    Path | None,
    typer.Option("--db", help="Audit database (default: <data dir>/audit.db).", show_default=False),
]
TaskOpt = Annotated[str | None, typer.Option("--task", help="Only this task id.", show_default=False)]
KeyOpt = Annotated[str | None, typer.Option("--key", help="Only this key (its display prefix).", show_default=False)]
TypeOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--type",
        help="Only this event type or kind (repeatable): message, tool_call, security, "
        "blocked_command, notice, auth_failure, malformed, ...",
        show_default=False,
    ),
]

_TYPE_STYLE = {
    "security": "bold red",
    "malformed": "red",
    "notice": "yellow",
    "finished": "bold green",
    "accepted": "cyan",
    "tool_call": "magenta",
    "tool_result": "magenta",
    "model_call": "blue",
}


def register(app: typer.Typer) -> None:
    group = typer.Typer(
        name="audit",
        no_args_is_help=True,
        help="The hash-chained audit log: run the writer, tail, search, verify, export, prune.",
    )
    group.command("run")(run_cmd)
    group.command("tail")(tail_cmd)
    group.command("search")(search_cmd)
    group.command("verify")(verify_cmd)
    group.command("export")(export_cmd)
    group.command("prune")(prune_cmd)
    app.add_typer(group)


def _db_path(settings: Settings, db: Path | None) -> Path:
    return db or default_db_path(settings.data_path)


def _open(settings: Settings, db: Path | None) -> sqlite3.Connection:
    try:
        return open_db(_db_path(settings, db), readonly=True)
    except AuditError as exc:
        fail(exc.describe())


def _stop_on_signals(stop: asyncio.Event) -> None:
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)


async def _write_when_ready(ready: asyncio.Event, path: Path) -> None:
    await ready.wait()
    write_ready_file(path)


def run_cmd(
    db: DbOpt = None,
    config: ConfigOpt = None,
    ready_file: Annotated[
        Path | None,
        typer.Option("--ready-file", help="Write the pid here (atomically) once consuming; removed on exit.", show_default=False),
    ] = None,
) -> None:
    """Run the audit writer: durable consumers on the events and audit streams -> SQLite."""
    settings = load_settings(config, nats_role="audit")

    async def main() -> None:
        stop = asyncio.Event()
        _stop_on_signals(stop)
        ready = asyncio.Event()
        try:
            async with asyncio.TaskGroup() as tg:
                announce = tg.create_task(_write_when_ready(ready, ready_file)) if ready_file else None
                try:
                    await run_audit(settings, db_path=_db_path(settings, db), stop=stop, ready=ready)
                finally:
                    if announce is not None:
                        announce.cancel()
        finally:
            if ready_file:
                remove_ready_file(ready_file)

    run(main())


def _print_row(row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        sys.stdout.write(json.dumps(row, default=str) + "\n")
        sys.stdout.flush()
        return
    line = Text.assemble(
        (row["ts"][11:23], "dim"),
        " ",
        (str(row.get("task_id") or "-"), "cyan"),
        " ",
        (f"#{row['seq']}" if row.get("seq") else "", "dim"),
        " ",
        (row["type"], _TYPE_STYLE.get(row["type"], "bold")),
        " ",
        (f"key={row['key_id']} " if row.get("key_id") else "", "yellow"),
        summarize(row),
    )
    out.print(line)
    out.file.flush()


def tail_cmd(
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Show events live from the bus as they happen.")] = False,
    task: TaskOpt = None,
    key: KeyOpt = None,
    types: TypeOpt = None,
    limit: Annotated[int, typer.Option("--limit", "-n", help="Rows from the database without --follow.")] = 20,
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """The latest audit rows, or (--follow) events and notices live as they are published."""
    settings = load_settings(config)
    if not follow:
        conn = _open(settings, db)
        try:
            rows = _guard(lambda: tail(conn, limit=limit, task=task, key=key, types=types or ()))
        finally:
            conn.close()
        for row in rows:
            _print_row(row, json_output)
        return
    run(_follow(settings, db, task=task, key=key, types=types or (), json_output=json_output))


def _guard(fn: Callable[[], T]) -> T:
    """Run a synchronous query; an expected error becomes one red line and exit 1."""
    try:
        return fn()
    except TaskbusError as exc:
        fail(exc.describe())


async def _follow(
    settings: Settings, db: Path | None, *, task: str | None, key: str | None, types: Sequence[str], json_output: bool
) -> None:
    known: dict[str, str] = {}
    path = _db_path(settings, db)
    if key and path.exists():
        with contextlib.closing(open_db(path, readonly=True)) as conn:
            known = dict(conn.execute("SELECT task_id, key_id FROM task_keys"))
    stop = asyncio.Event()
    _stop_on_signals(stop)
    accept = LiveFilter(task=task, key=key, types=types, known_keys=known)
    async with await Bus.for_settings(settings, name="taskbus-tail") as bus:
        subscribed = asyncio.Event()

        async def pump() -> None:
            async for row in follow(bus, accept=accept, subscribed=subscribed):
                _print_row(row, json_output)

        try:
            async with asyncio.TaskGroup() as tg:
                pumping = tg.create_task(pump())
                waiter = tg.create_task(subscribed.wait())
                await asyncio.wait({pumping, waiter}, return_when=asyncio.FIRST_COMPLETED)
                if subscribed.is_set():
                    err.print(f"following {settings.subject_prefix} events and notices (Ctrl-C stops)")
                await stop.wait()
                pumping.cancel()
        except* TaskbusError as group:  # one red line, not a group traceback
            raise group.exceptions[0] from None


def search_cmd(
    since: Annotated[str | None, typer.Option("--since", help="1h, 30m, 7d ago, or an ISO time.", show_default=False)] = None,
    until: Annotated[str | None, typer.Option("--until", help="Same forms as --since.", show_default=False)] = None,
    types: TypeOpt = None,
    key: KeyOpt = None,
    task: TaskOpt = None,
    text: Annotated[str | None, typer.Option("--text", help="Full-text: rows containing every word.", show_default=False)] = None,
    agent: Annotated[
        str | None,
        typer.Option("--agent", help="Spawns of this sub-agent, its own tool calls and its catalog changes.", show_default=False),
    ] = None,
    skill: Annotated[
        str | None, typer.Option("--skill", help="Invocations of this skill and its catalog changes.", show_default=False)
    ] = None,
    limit: Annotated[int, typer.Option("--limit", help="Most rows returned.")] = 100,
    json_output: JsonOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Search the audit log by time range, type, key, task, text, agent and skill."""
    settings = load_settings(config)
    conn = _open(settings, db)

    def query() -> list[dict[str, Any]]:
        return search(
            conn,
            limit=limit,
            types=types or (),
            key=key,
            task=task,
            text=text,
            agent=agent,
            skill=skill,
            since_us=parse_time(since) if since else None,
            until_us=parse_time(until) if until else None,
        )

    try:
        rows = _guard(query)
    finally:
        conn.close()
    if json_output:
        print_json(rows)
        return
    table = Table(title=f"{len(rows)} audit rows", show_lines=False)
    for column in ("row", "time (UTC)", "task", "seq", "type", "key", "what"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(
            str(row["id"]),
            row["ts"][:23],
            row["task_id"] or "-",
            str(row["seq"] or ""),
            Text(row["type"], style=_TYPE_STYLE.get(row["type"], "")),
            row["key_id"] or "",
            summarize(row, 100),
        )
    out.print(table)


def verify_cmd(json_output: JsonOpt = False, db: DbOpt = None, config: ConfigOpt = None) -> None:
    """Walk the hash chain; exit 1 naming the first row altered, deleted or inserted."""
    settings = load_settings(config)
    conn = _open(settings, db)
    try:
        result = _guard(lambda: verify(conn))
    finally:
        conn.close()
    if json_output:
        print_json(result)
        if not result.ok:
            raise typer.Exit(1)
        return
    if result.problem is not None:
        fail(
            f"audit chain broken: {result.problem.message}. Keep the database as evidence; "
            "compare with the chain heads published on the auditlog.head subject (their `writer` field names this copy's writer)."
        )
    span = f"rows {result.first_row}..{result.last_row}" if result.rows else "no rows"
    since = f" after checkpoint row {result.checkpoint_row}" if result.checkpoint_row else ""
    out.print(f"[green]chain ok[/green]: {result.rows} rows ({span}){since}; head {result.head_hash}")


def export_cmd(
    fmt: Annotated[str, typer.Option("--format", help="Export format (jsonl).")] = "jsonl",
    out_path: Annotated[Path | None, typer.Option("--out", help="File to write (default: stdout).", show_default=False)] = None,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Every row in chain order as JSON lines, with hashes, so the export can be checked too."""
    if fmt != "jsonl":
        fail(f"--format {fmt!r} is not supported; use --format jsonl", code=2)
    settings = load_settings(config)
    conn = _open(settings, db)
    try:
        if out_path is None:
            count = _guard(lambda: export_jsonl(conn, sys.stdout.buffer))
            sys.stdout.flush()
        else:
            with out_path.open("wb") as fh:
                count = _guard(lambda: export_jsonl(conn, fh))
    finally:
        conn.close()
    err.print(f"exported {count} rows" + (f" to {out_path}" if out_path else ""))


def prune_cmd(
    older_than: Annotated[str, typer.Option("--older-than", help="Delete rows older than this (e.g. 30d).")],
    json_output: JsonOpt = False,
    db: DbOpt = None,
    config: ConfigOpt = None,
) -> None:
    """Delete old rows, keeping the chain verifiable through a recorded checkpoint."""
    settings = load_settings(config)
    path = _db_path(settings, db)
    if not path.exists():
        fail(f"no audit database at {path}; pass --db or start `taskbus audit run` first")

    def do_prune() -> PruneResult:
        seconds = parse_duration(older_than)
        with contextlib.closing(open_db(path)) as conn:
            return prune(conn, before_us=int((time.time() - seconds) * 1_000_000))

    result = _guard(do_prune)
    if json_output:
        print_json(result)
    else:
        out.print(f"pruned {result.rows} rows; checkpoint at row {result.checkpoint_row}")
