"""``taskbus up`` in the foreground: supervise the stack, show it, stop it on a signal."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

from rich.console import Console
from rich.live import Live

from profiles import publish_notices

from ._firstrun import FirstRun
from ._panel import StatusBoard, stack_info, supervisor_rows
from ._permissions import write_permissions_example
from ._plan import Plan
from ._sandbox import ensure_sandbox
from ._state import remove_files, write_pid, write_state
from ._supervisor import StartInterrupted, Supervisor

logger = logging.getLogger(__name__)

_STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # HUP: the terminal went away


async def run_stack(
    plan: Plan, first: FirstRun, *, console: Console | None, stop: asyncio.Event | None = None, ready: asyncio.Event | None = None
) -> None:
    """Run until SIGINT/SIGTERM (or ``stop``). ``console`` = live panel on it; None = log lines only."""
    data = plan.settings.data_path.resolve()
    stop = stop or asyncio.Event()
    await asyncio.to_thread(ensure_sandbox, plan.settings, plan.backend, console)  # UpError: what to run
    loop = asyncio.get_running_loop()
    for sig in _STOP_SIGNALS:
        loop.add_signal_handler(sig, stop.set)
    data.mkdir(parents=True, exist_ok=True)
    write_pid(data)
    write_permissions_example(data / "nats-permissions.conf", plan.settings.subject_prefix)
    board: StatusBoard | None = None

    def changed() -> None:
        if board is not None:
            write_state(data, board.snapshot())

    supervisor = Supervisor(plan.specs, log_dir=data / "logs", on_change=changed, stop=stop)
    board = StatusBoard(stack_info(plan, first), supervisor_rows(supervisor), admin_key=first.admin_key)
    live = (
        Live(board.render(), console=console, refresh_per_second=2, get_renderable=board.render, transient=False)
        if console is not None
        else None
    )
    try:
        with live if live is not None else contextlib.nullcontext():
            try:
                await supervisor.__aenter__()  # UpError when a child cannot start
            except StartInterrupted:
                logger.info("stopped during start-up")
                return
            try:
                await _published(plan, first)
                board.ready = True
                changed()
                if ready is not None:
                    ready.set()
                _say_ready(plan, first, console)
                async with asyncio.TaskGroup() as tg:
                    tg.create_task(board.follow(stop))
                    await stop.wait()
                logger.info("stopping: server, runner, audit, model, nats")
            finally:
                await supervisor.__aexit__(None, None, None)
    finally:
        for sig in _STOP_SIGNALS:
            loop.remove_signal_handler(sig)
        remove_files(data)
    logger.info("taskbus up stopped; nothing left running")


async def _published(plan: Plan, first: FirstRun) -> None:
    if not first.notices:
        return
    warning = await publish_notices(plan.client_settings(), first.notices)
    if warning:
        logger.warning("%s", warning)


def _say_ready(plan: Plan, first: FirstRun, console: Console | None) -> None:
    if console is not None:
        return  # the panel says it
    model = "offline scripted model" if plan.offline else plan.upstream
    logger.info(
        "taskbus up ready: MCP %s, NATS %s, model %s, backend %s; SIGINT/SIGTERM stops everything",
        plan.mcp_url,
        plan.nats_url,
        model,
        plan.backend,
    )
