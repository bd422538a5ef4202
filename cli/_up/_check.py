"""``taskbus up --check``, ``taskbus up --detach`` and ``taskbus demo``: the stack driven from outside."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import subprocess
import time
from pathlib import Path
from typing import Any

from rich.console import Console

from bus import Bus, Settings, TaskbusError, decode_heartbeat
from profiles import publish_notices

from ._demo import DemoResult, run_demo
from ._firstrun import FirstRun, demo_key
from ._plan import Plan
from ._run import run_stack
from ._state import pid_alive, read_state, stack_settings
from ._supervisor import UpError

logger = logging.getLogger(__name__)

WARM_WAIT_S = 20.0
"""How long the demo waits for the runner's warm agent before it submits its task."""


async def demo_against(settings: Settings, state: dict[str, Any], console: Console) -> DemoResult:
    """The demo against a running stack described by ``state`` (``up.json``)."""
    settings = stack_settings(settings, state)
    key, notices = await demo_key(settings)
    warning = await publish_notices(settings, notices)
    if warning:
        logger.warning("%s", warning)
    await wait_for_warm_agent(settings)
    return await run_demo(settings, state["mcp_url"], key, console=console)


async def wait_for_warm_agent(settings: Settings, *, timeout_s: float = WARM_WAIT_S) -> bool:
    """Wait (at most ``timeout_s``) until a runner's heartbeat shows an idle warm agent, so
    the demo shows the warm path; the demo runs cold when none comes (warm agents off, or
    the class the runner was seeded with no longer matches the profile)."""
    seen = asyncio.Event()

    async def on_beat(msg: Any) -> None:
        with contextlib.suppress(TaskbusError):
            if sum(decode_heartbeat(msg.data).warm_agents.values()) > 0:
                seen.set()

    try:
        async with await Bus.for_settings(settings, name="taskbus-demo") as bus:
            sub = await bus.nc.subscribe(bus.subjects.runners_all(), cb=on_beat)
            try:
                async with asyncio.timeout(timeout_s):
                    await seen.wait()
            except TimeoutError:
                logger.info("no warm agent within %.0fs: the demo task starts cold", timeout_s)
            finally:
                await sub.unsubscribe()
    except TaskbusError as exc:
        logger.info("cannot watch the runners' heartbeats (%s): the demo task may start cold", exc.describe())
    return seen.is_set()


async def check(plan: Plan, first: FirstRun, console: Console) -> DemoResult:
    """Start the stack, run the demo once, stop everything. The result says if it passed."""
    stop = asyncio.Event()
    ready = asyncio.Event()
    stack = asyncio.create_task(run_stack(plan, first, console=None, stop=stop, ready=ready))
    waiter = asyncio.create_task(ready.wait())
    try:
        await asyncio.wait({stack, waiter}, return_when=asyncio.FIRST_COMPLETED)
        if not ready.is_set():
            stack.result()  # the start-up error
            raise UpError("the stack stopped before it was ready")
        state = read_state(plan.settings.data_path.resolve()) or {}
        return await demo_against(plan.settings, state, console)
    finally:
        waiter.cancel()
        stop.set()
        await asyncio.shield(stack)


def spawn_detached(argv: list[str], env: dict[str, str], data: Path, *, timeout_s: float = 120.0) -> dict[str, Any]:
    """Start ``taskbus up`` in its own session with output to ``logs/up.log``; wait until it is ready.

    Returns its ``up.json``. Raises UpError with the log's tail when it fails to start.
    """
    log_path = data / "logs" / "up.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("ab") as log:
        proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log_path.read_bytes()[-2000:].decode(errors="replace").strip()
            raise UpError(f"taskbus up exited with code {proc.returncode} while starting; {log_path} ends with:\n{tail}")
        state = read_state(data)
        if state and state.get("ready") and state.get("pid") == proc.pid:
            return state
        time.sleep(0.1)
    if pid_alive(proc.pid):
        proc.terminate()
    raise UpError(f"taskbus up was not ready within {timeout_s:.0f}s; see {log_path}")
