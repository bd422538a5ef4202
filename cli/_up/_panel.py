"""The live status of ``taskbus up``: processes, runner slots (heartbeats) and recent tasks.

``StatusBoard.follow`` listens on ``<prefix>.runners.*`` and ``<prefix>.events.>`` (core
subscriptions: it sees what happens while it runs, it does not replay). ``render`` builds
the rich panel; ``snapshot`` is the same facts as JSON for ``up.json``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from rich.console import Group
from rich.panel import Panel
from rich.table import Table
from rich.text import Text

from bus import Bus, Finished, Subjects, TaskbusError, decode_event, decode_heartbeat, read_credentials
from server import console_enabled

from ._firstrun import FirstRun
from ._plan import OFFLINE_LABEL, Plan
from ._supervisor import Supervisor


def stack_info(plan: Plan, first: FirstRun) -> dict[str, Any]:
    """The facts ``up.json`` and the panel show (no secret: the admin key is not here)."""
    return {
        "pid": os.getpid(),
        "mcp_url": plan.mcp_url,
        "console_url": f"{plan.base_url}/console" if console_enabled(plan.settings, plan.http_host) else "",
        "metrics_url": f"{plan.base_url}/metrics",
        "runner_metrics_url": f"http://{plan.settings.runner_metrics_host}:{plan.runner_metrics_port}/metrics",
        "nats_url": plan.nats_url,
        "nats_embedded": plan.nats_embedded,
        "nats_credentials": plan.nats_credentials,
        "offline_model": plan.offline,
        "model_url": plan.model_url,
        "upstream": plan.upstream,
        "backend": plan.backend,
        "runner_id": plan.runner_id,
        "subject_prefix": plan.settings.subject_prefix,
        "data_dir": str(plan.settings.data_path.resolve()),
        "admin_prefix": first.admin_prefix,
    }


def supervisor_rows(supervisor: Supervisor) -> Callable[[], list[dict[str, Any]]]:
    def rows() -> list[dict[str, Any]]:
        return [
            {"name": c.spec.name, "label": c.spec.label, "pid": c.pid, "state": c.state, "restarts": c.restarts, "log": str(c.log_path)}
            for c in supervisor.children
        ]

    return rows


logger = logging.getLogger(__name__)

MAX_TASKS = 8
_STATE_STYLE = {
    "ready": "green",
    "starting": "yellow",
    "backoff": "red",
    "failed": "bold red",
    "stopping": "yellow",
    "stopped": "dim",
    "waiting": "dim",
}
_STATUS_STYLE = {"succeeded": "green", "failed": "red", "timeout": "red", "cancelled": "yellow", "budget_exceeded": "red", "denied": "red"}


class StatusBoard:
    """``info``: the facts of ``up.json`` (see ``stack_info``); ``children``: process rows."""

    def __init__(self, info: dict[str, Any], children: Callable[[], list[dict[str, Any]]], *, admin_key: str | None = None) -> None:
        self.info = info
        self.children = children
        self.admin_key = admin_key
        self.runners: dict[str, tuple[Any, float]] = {}
        self.tasks: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self.ready = False

    # ------------------------------------------------------------------ bus

    async def follow(self, stop: asyncio.Event) -> None:
        """Until ``stop``: heartbeats and task events into this board."""
        subjects = Subjects(self.info["subject_prefix"])
        try:
            creds = self.info.get("nats_credentials")
            bus = await Bus.open(
                self.info["nats_url"], subjects, name="taskbus-status", credentials=read_credentials(creds) if creds else None
            )
        except TaskbusError as exc:
            logger.warning("status panel cannot reach NATS (%s); process list only", exc.describe())
            await stop.wait()
            return
        async with bus:
            subs = [
                await bus.nc.subscribe(subjects.runners_all(), cb=self._on_heartbeat),
                await bus.nc.subscribe(subjects.events_all(), cb=self._on_event),
            ]
            try:
                await stop.wait()
            finally:
                for sub in subs:
                    await sub.unsubscribe()

    async def _on_heartbeat(self, msg: Any) -> None:
        try:
            beat = decode_heartbeat(msg.data)
        except TaskbusError:
            return
        self.runners[beat.runner_id] = (beat, time.monotonic())

    async def _on_event(self, msg: Any) -> None:
        try:
            event = decode_event(msg.data)
        except TaskbusError:
            return
        self.note_event(event)

    def note_event(self, event: Any) -> None:
        row = self.tasks.pop(event.task_id, None) or {
            "task_id": event.task_id,
            "status": "queued",
            "model": "",
            "cost_usd": 0.0,
            "last": "",
            "kind": "",
        }
        kind = type(event).__name__
        if kind == "Accepted":
            row.update(kind=event.kind, model=event.model, status="queued")
        elif kind == "Started":
            row["status"] = "running"
        elif kind == "ModelCall":
            row["cost_usd"] = event.total_cost_usd
        elif kind == "ToolCall":
            row["last"] = f"tool {event.name}"
        elif kind == "Artifact":
            row["last"] = f"artifact {event.path}"
        elif isinstance(event, Finished):
            row.update(status=event.status, cost_usd=event.cost_usd, last=(event.result or "")[:60])
        self.tasks[event.task_id] = row
        while len(self.tasks) > MAX_TASKS:
            self.tasks.popitem(last=False)

    # ------------------------------------------------------------------ views

    def snapshot(self) -> dict[str, Any]:
        return {**self.info, "ready": self.ready, "children": self.children()}

    def header(self) -> Text:
        text = Text()

        def line(label: str, value: str, style: str = "", note: str = "") -> None:
            text.append(f"{label:<10}", style="bold")
            text.append(value, style=style)
            if note:
                text.append(f"  {note}", style="dim")
            text.append("\n")

        line("MCP", self.info["mcp_url"], "cyan", "Streamable HTTP + bearer key")
        line("NATS", self.info["nats_url"], "", "embedded" if self.info["nats_embedded"] else "")
        if self.info.get("console_url"):
            line("console", self.info["console_url"], "bold cyan", "log in with an admin key")
        line("metrics", self.info.get("metrics_url", ""), "", f"runner: {self.info.get('runner_metrics_url', '')}")
        if self.info["offline_model"]:
            line("model", OFFLINE_LABEL, "bold yellow", "(real: ANTHROPIC_API_KEY)")
        else:
            line("model", self.info["upstream"])
        if self.admin_key:
            line("admin key", self.admin_key, "bold green", "shown once")
        else:
            line("admin key", f"{self.info['admin_prefix']}...", "dim", "more: taskbus keys create --profile admin")
        line("data", self.info["data_dir"], "", "logs in <data>/logs/")
        text.append("Ctrl-C stops everything", style="bold magenta")
        return text

    def render(self) -> Panel:
        procs = Table("process", "pid", "state", "restarts", "what", box=None, pad_edge=False, header_style="bold underline")
        for c in self.children():
            procs.add_row(
                c["name"],
                str(c["pid"] or "-"),
                Text(c["state"], style=_STATE_STYLE.get(c["state"], "")),
                str(c["restarts"]),
                Text(c["label"], style="bold yellow" if c["label"] == OFFLINE_LABEL else "dim"),
            )
        runners = Table(
            "runner",
            "backend",
            "slots busy",
            "running",
            "warm agents",
            "last beat",
            box=None,
            pad_edge=False,
            header_style="bold underline",
        )
        now = time.monotonic()
        for rid, (beat, seen) in sorted(self.runners.items()):
            backend = Text(beat.backend)
            if not beat.ready and beat.problem:  # the runner's self-check failed: say why
                backend.append(f" NOT READY: {beat.problem[:160]}", style="bold red")
            runners.add_row(
                rid,
                backend,
                f"{len(beat.running)}/{beat.slots}",
                ", ".join(beat.running) or "-",
                warm_agents_text(beat.warm_agents),
                f"{now - seen:.0f}s ago",
            )
        if not self.runners:
            runners.add_row("(waiting for a heartbeat)", "", "", "", "", "")
        tasks = Table("task", "kind", "status", "model", "cost $", "latest", box=None, pad_edge=False, header_style="bold underline")
        for row in reversed(self.tasks.values()):
            tasks.add_row(
                row["task_id"],
                row["kind"],
                Text(row["status"], style=_STATUS_STYLE.get(row["status"], "")),
                row["model"],
                f"{row['cost_usd']:.4f}",
                row["last"],
            )
        if not self.tasks:
            tasks.add_row("(no task since start)", "", "", "", "", "")
        title = "taskbus up: ready" if self.ready else "taskbus up: starting"
        return Panel(Group(self.header(), procs, runners, tasks), title=title, border_style="green" if self.ready else "yellow")


def warm_agents_text(per_class: dict[str, int]) -> str:
    """Idle warm agents per task class, e.g. ``3: 2 x 1a2b3c, 1 x 4d5e6f``; ``-`` for none."""
    if not per_class:
        return "-"
    total = sum(per_class.values())
    return f"{total}: " + ", ".join(f"{n} x {klass}" for klass, n in sorted(per_class.items()))
