"""``taskbus serve``, ``taskbus tasks list|show|watch|cancel`` (``artifacts``: _artifacts) and ``taskbus submit``."""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import signal
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec
import typer
from rich.markup import escape
from rich.table import Table

from bus import Bus, BusError, SubmitRejected, TaskbusError, decode_reply, first_error, load_or_create_job_secret
from profiles import Store
from server import Caller, Dispatcher, TaskWatch, Transport, event_summary, follow_events, replay_events, run_server

from . import _artifacts
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

tasks_app = typer.Typer(help="Inspect, follow and cancel tasks (operators: every key's tasks).", no_args_is_help=True)

KeyOpt = Annotated[
    str | None,
    typer.Option("--key", envvar="TASKBUS_API_KEY", help="API key to submit with.", show_default=False),
]


def _run(coro: Any) -> Any:
    try:
        return run(coro)
    except BaseExceptionGroup as group:
        inner = first_error(group)
        if isinstance(inner, TaskbusError):
            fail(inner.describe())
        raise


def register(app: typer.Typer) -> None:
    _artifacts.register(tasks_app)
    app.command()(serve)
    app.command()(submit)
    app.add_typer(tasks_app, name="tasks")


_TRANSPORTS: dict[str, Transport] = {"stdio": "stdio", "http": "http", "none": "none"}


def serve(
    transport: Annotated[
        str, typer.Option(help="stdio (one MCP client, key from TASKBUS_API_KEY), http, or none (NATS gateway only).")
    ] = "http",
    host: Annotated[str | None, typer.Option(help="HTTP address (default TASKBUS_HTTP_HOST).", show_default=False)] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default TASKBUS_HTTP_PORT).", show_default=False)] = None,
    config: ConfigOpt = None,
) -> None:
    """Run the MCP server and the NATS submit gateway."""
    mode = _TRANSPORTS.get(transport)
    if mode is None:
        fail("--transport must be stdio, http or none (NATS submit gateway only)", code=2)

    settings = load_settings(config, nats_role="server")
    if mode == "stdio" and not settings.api_key:
        fail("stdio needs an API key: set TASKBUS_API_KEY (operators create one with `taskbus keys create`)")

    async def main() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run_server(settings, transport=mode, host=host, port=port, stop=stop)

    _run(main())


# --------------------------------------------------------------------------- tasks


def _rows(records: list[Any]) -> Table:
    table = Table("task", "key", "profile", "kind", "status", "model", "cost $", "created")
    for r in records:
        table.add_row(
            r.task_id,
            r.key_id,
            r.profile,
            r.kind,
            r.status,
            r.model or "",
            f"{r.cost_usd or 0:.4f}",
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        )
    return table


@tasks_app.command("list")
def tasks_list(
    status: Annotated[str | None, typer.Option(help="Only tasks with this status.")] = None,
    key: Annotated[str | None, typer.Option("--key-id", help="Only this key (display prefix tb_XXXXXXXX).")] = None,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Recent tasks from the registry."""
    settings = load_settings(config)

    async def main() -> list[Any]:
        async with Store.for_settings(settings) as store:
            return await store.list_tasks(key, status=status, limit=limit)

    records = _run(main())
    if json_output:
        print_json({"tasks": records})
    elif records:
        out.print(_rows(records))
    else:
        out.print("no tasks")


async def _load(settings: Any, task_id: str) -> tuple[Any, list[Any]]:
    async with Store.for_settings(settings) as store:
        record = await store.get_task(task_id)
    async with await Bus.for_settings(settings, name="taskbus-cli") as bus:
        events = await replay_events(bus, task_id)
    return record, events


@tasks_app.command("show")
def tasks_show(
    task_id: Annotated[str, typer.Argument(help="Task id (t_...).")],
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """One task: its registry row and every event it has published."""
    settings = load_settings(config)
    record, events = _run(_load(settings, task_id))
    if json_output:
        print_json({"task": record, "events": events})
        return
    out.print(_rows([record]))
    for event in events:
        out.print(_event_line(event))


def _event_line(event: Any) -> str:
    text = event_summary(event) or type(event).__name__.lower()
    if type(event).__name__ == "Accepted":
        text = f"accepted on {event.model} ({event.routing_reason})"
    if type(event).__name__ == "Finished":
        text = f"finished: {event.status} ${event.cost_usd:.4f} {event.duration_ms} ms — {event.result[:200]}"
    return f"[dim]{event.seq:>4} {event.ts:%H:%M:%S}[/dim] {_escape(text)}"


def _escape(text: str) -> str:
    return escape(text)


async def _follow(settings: Any, subject_task: str, *, quiet: bool) -> Any:
    watch = TaskWatch(subject_task)
    async with await Bus.for_settings(settings, name="taskbus-cli") as bus:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(follow_events(bus, watch))
            if quiet:
                await watch.wait_finished()
            else:
                with err.status(f"following {subject_task}…") as status:
                    async for event in watch.stream(keepalive_s=1.0):
                        if event is not None:
                            out.print(_event_line(event))
                        status.update(f"{subject_task}: {watch.count} events, ${watch.cost_so_far:.4f}")
    return watch


def _summary(watch: Any) -> dict[str, Any]:
    finished = watch.finished
    return {
        "task_id": watch.task_id,
        "status": finished.status,
        "result": finished.result,
        "reason": finished.reason,
        "cost_usd": finished.cost_usd,
        "duration_ms": finished.duration_ms,
        "usage": msgspec.to_builtins(finished.usage),
        "artifacts": [a.path for a in watch.artifacts],
        "events": watch.count,
    }


@tasks_app.command("watch")
def tasks_watch(
    task_id: Annotated[str, typer.Argument(help="Task id (t_...).")],
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Follow a task's events live (from its first event) until it finishes."""
    settings = load_settings(config)
    watch = _run(_follow(settings, task_id, quiet=json_output))
    if json_output:
        print_json(_summary(watch))


@tasks_app.command("cancel")
def tasks_cancel(
    task_id: Annotated[str, typer.Argument(help="Task id (t_...).")],
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Cancel a queued or running task (its sandbox is destroyed)."""
    settings = load_settings(config, nats_role="server")  # it cancels as the server does

    async def main() -> str:
        async with Store.for_settings(settings) as store:
            record = await store.get_task(task_id)
            async with await Bus.for_settings(settings, name="taskbus-cli") as bus:
                dispatcher = Dispatcher(settings, bus, store, secret=load_or_create_job_secret(settings))
                return await dispatcher.cancel(
                    Caller(record.key_id, record.profile),
                    task_id,
                    reason="cancelled by an operator",
                    actor=f"cli:{getpass.getuser()}",
                )

    status = _run(main())
    if json_output:
        print_json({"task_id": task_id, "status": status})
    else:
        out.print(f"{task_id}: {status}")


# --------------------------------------------------------------------------- submit


def submit(
    text: Annotated[str, typer.Argument(help="Task description (or the prompt with --complete).")],
    complete: Annotated[bool, typer.Option("--complete", help="Submit a completion instead of a task.")] = False,
    files: Annotated[list[Path] | None, typer.Option("--file", help="Put this file in the workspace (repeatable).")] = None,
    timeout_s: Annotated[int | None, typer.Option("--timeout", help="Wall-clock limit in seconds.")] = None,
    max_cost: Annotated[float | None, typer.Option("--max-cost", help="Cost cap in USD.")] = None,
    model: Annotated[str, typer.Option(help="'auto' or a model the profile allows.")] = "auto",
    project: Annotated[
        str | None,
        typer.Option("--project", help="Project folder mounted at /project (one of the profile's project roots).", show_default=False),
    ] = None,
    allow_tools: Annotated[
        list[str] | None, typer.Option("--allow-tool", help="Only these tools, within the profile's (repeatable).", show_default=False)
    ] = None,
    allow_agents: Annotated[
        list[str] | None,
        typer.Option("--allow-agent", help="Only these sub-agents, within the profile's (repeatable).", show_default=False),
    ] = None,
    allow_skills: Annotated[
        list[str] | None, typer.Option("--allow-skill", help="Only these skills, within the profile's (repeatable).", show_default=False)
    ] = None,
    max_turns: Annotated[
        int | None, typer.Option("--max-turns", min=1, max=1000, help="Most agent turns (within the profile's limit).", show_default=False)
    ] = None,
    effort: Annotated[str | None, typer.Option("--effort", help="low, medium or high.", show_default=False)] = None,
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="Follow the events until it finishes.")] = True,
    key: KeyOpt = None,
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Submit over NATS like any external publisher would, and show live progress."""
    settings = load_settings(config)
    if not key:
        fail("no API key: pass --key or set TASKBUS_API_KEY", code=2)
    task_only = {
        "--project": project,
        "--allow-tool": allow_tools,
        "--allow-agent": allow_agents,
        "--allow-skill": allow_skills,
        "--max-turns": max_turns,
        "--effort": effort,
        "--file": files,
    }
    if effort is not None and effort not in ("low", "medium", "high"):
        fail(f"--effort must be low, medium or high, not {effort!r}", code=2)
    if complete:
        if given := [flag for flag, value in task_only.items() if value is not None]:
            fail(f"{', '.join(given)} only apply to tasks; drop them or --complete", code=2)
        body: dict[str, Any] = {"prompt": text, "model": model}
    else:
        body = _task_body(text, model, task_only)
        if timeout_s is not None:
            body["timeout_s"] = timeout_s
    if max_cost is not None:
        body["max_cost_usd"] = max_cost
    kind: Literal["complete", "task"] = "complete" if complete else "task"

    async def main() -> Any:
        async with await Bus.for_settings(settings, name="taskbus-submit", open_timeout=5) as bus:
            subject = bus.subjects.submit(kind)
            try:
                msg = await bus.nc.request(subject, json.dumps(body).encode(), headers={"Authorization": f"Bearer {key}"}, timeout=30)
            except Exception as exc:  # nats: no responders, timeout, permissions
                raise BusError(
                    f"no answer to the submit on {subject} ({str(exc) or type(exc).__name__}); "
                    "is the server running? (`taskbus status` shows the stack)"
                ) from None
        reply = decode_reply(msg.data)
        if isinstance(reply, SubmitRejected):
            return reply
        if not wait:
            return reply
        return await _follow(settings, reply.task_id, quiet=json_output)

    result = _run(main())
    if isinstance(result, SubmitRejected):
        if json_output:
            print_json(result)
        fail(f"rejected ({result.code}): {result.message}")
    if not wait:
        if json_output:
            print_json(result)
        else:
            out.print(f"accepted {result.task_id}; follow with `taskbus tasks watch {result.task_id}`")
        return
    summary = _summary(result)
    if json_output:
        print_json(summary)
    else:
        out.print(f"{summary['status']} (${summary['cost_usd']:.4f}, {summary['duration_ms']} ms)")
        if summary["result"]:
            out.print(summary["result"], markup=False)
    if summary["status"] != "succeeded":
        raise typer.Exit(1)


def _task_body(text: str, model: str, options: dict[str, Any]) -> dict[str, Any]:
    """A TaskRequest body with what ``run_task`` takes (fields left out stay the profile's)."""
    body: dict[str, Any] = {"description": text, "model": model}
    if options["--file"]:
        body["files"] = [{"path": f.name, "content": _read(f)} for f in options["--file"]]
    if options["--project"] is not None:  # absolute, symlinks kept: the profile's roots are compared as written
        body["project"] = os.path.abspath(os.path.expanduser(options["--project"]))
    for flag, field in (
        ("--allow-tool", "allow_tools"),
        ("--allow-agent", "allow_agents"),
        ("--allow-skill", "allow_skills"),
        ("--max-turns", "max_turns"),
        ("--effort", "effort"),
    ):
        if options[flag] is not None:
            body[field] = options[flag]
    return body


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {path}: {exc}; pass UTF-8 text files", code=2)
