"""What a scenario left behind, measured from the stores a user would check, and the table.

``measure`` reads: every event in the TASKBUS_EVENTS stream (what runners published),
the audit database (what the audit subscriber stored), the task registry and the budget
ledger in the profiles database, and each backend's sandbox list. ``Row`` holds the
counts; ``Row.verdict`` is PASS only when nothing was lost, duplicated, left or overspent
and nothing escaped.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import bus as bus_module
from bus import Finished, ModelCall, Started

FINAL = {"succeeded", "failed", "timeout", "cancelled", "budget_exceeded", "denied"}


@dataclass
class Row:
    scenario: str
    submitted: int = 0
    finished: dict[str, int] = field(default_factory=dict)
    lost_jobs: int = 0
    """Tasks the registry accepted that never got a ``finished`` event (or stay unfinished)."""
    duplicate_runs: int = 0
    """Tasks with more than one ``started`` event."""
    events_expected: int = 0
    events_stored: int = 0
    lost_events: int = 0
    duplicate_events: int = 0
    sandboxes_left: int = 0
    ledger_usd: float = 0.0
    """Settled spend in the profiles database's budget ledger."""
    metered_usd: float = 0.0
    """Sum of ``finished.cost_usd`` (what each task reported as its metered cost)."""
    gateway_usd: float = 0.0
    """Sum of ``model_call.cost_usd`` (every model call the gateways metered)."""
    uncharged_usd: float = 0.0
    """Metered by a gateway but missing from the task's ``finished`` cost (never charged)."""
    open_reservations: int = 0
    budget_overshoot: int = 0
    escapes: int = 0
    rejected: int = 0
    """Requests refused with a clear error (hostile input, full disk)."""
    unclear: int = 0
    """Hostile requests that were not refused with a clear error."""
    state_changes: int = 0
    """Rows a refused request left in the task registry or the ledger."""
    faults: int = 0
    """Faults injected (kills, restarts)."""
    crashed: list[str] = field(default_factory=list)
    """Stack processes that were not running at the end (none was killed by the scenario)."""
    details: list[dict[str, Any]] = field(default_factory=list)
    """Per-step outcomes (hostile agent)."""
    duration_s: float = 0.0
    notes: list[str] = field(default_factory=list)

    @property
    def failures(self) -> list[str]:
        bad = []
        for name in (
            "lost_jobs",
            "duplicate_runs",
            "lost_events",
            "duplicate_events",
            "sandboxes_left",
            "open_reservations",
            "budget_overshoot",
            "escapes",
            "unclear",
            "state_changes",
        ):
            if getattr(self, name):
                bad.append(f"{name}={getattr(self, name)}")
        if self.crashed:
            bad.append(f"crashed: {', '.join(self.crashed)}")
        if self.uncharged_usd > 1e-6:
            bad.append(f"uncharged model spend ${self.uncharged_usd:.6f}")
        if abs(self.ledger_usd - self.metered_usd) > 1e-6 * max(1, self.submitted):
            bad.append(f"ledger {self.ledger_usd:.6f} != metered {self.metered_usd:.6f}")
        return bad

    @property
    def verdict(self) -> str:
        return "PASS" if not self.failures else "FAIL"

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "verdict": self.verdict, "failures": self.failures}


async def stream_events(b: bus_module.Bus, *, timeout: float = 60) -> list[bus_module.Event]:
    """Every event in the events stream, in stream order."""
    from nats.js.api import DeliverPolicy

    info = await b.js.stream_info(b.subjects.events_stream)
    last = info.state.last_seq
    if info.state.messages == 0:
        return []
    sub = await b.js.subscribe(b.subjects.events_all(), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    events = []
    try:
        async with asyncio.timeout(timeout):
            while True:
                msg = await sub.next_msg(timeout=timeout)
                try:
                    events.append(bus_module.decode_event(msg.data))
                except bus_module.MessageDecodeError:
                    pass  # hostile input published on an events subject: not a task's event
                if msg.metadata.sequence.stream >= last:
                    return events
    finally:
        await sub.unsubscribe()


def _audit_keys(db: Path, stream: str) -> list[tuple[str, int]]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
    try:
        return [(t, s) for t, s in conn.execute("SELECT task_id, seq FROM audit WHERE stream = ? AND type != 'malformed'", (stream,))]
    finally:
        conn.close()


async def wait_audit(data: Path, stream: str, expected: int, *, timeout: float = 120) -> list[tuple[str, int]]:
    """Audit rows of the events stream, once at least ``expected`` are there (or the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await asyncio.to_thread(_audit_keys, data / "audit.db", stream)
        if len(rows) >= expected or time.monotonic() > deadline:
            return rows
        await asyncio.sleep(0.25)


async def _ledger(settings: bus_module.Settings) -> tuple[dict[str, tuple[str, int, int | None]], dict[str, str]]:
    """Every reservation (state, amount, actual in micro-USD) and every task's status, from
    the control plane on NATS."""
    from profiles import Store
    from profiles._kv import loads, scan

    async with Store.for_settings(settings, actor="chaos-report") as store:
        ledger = {}
        for _, value in await scan(store.ledger.kv, "res.>"):
            doc = loads(value)
            ledger[doc["task_id"]] = (doc["state"], doc["amount"], doc["actual"])
        tasks = {t.task_id: t.status for t in await store.list_tasks(None, limit=1_000_000)}
    return ledger, tasks


async def wait_settled(settings: bus_module.Settings, *, timeout: float = 60) -> tuple[dict[str, Any], dict[str, str]]:
    """Ledger and registry once no task is left unfinished (or the deadline)."""
    deadline = time.monotonic() + timeout
    while True:
        ledger, tasks = await _ledger(settings)
        if all(s in FINAL for s in tasks.values()) or time.monotonic() > deadline:
            return ledger, tasks
        await asyncio.sleep(0.25)


async def sandboxes(settings: bus_module.Settings, backends: set[str]) -> list[Any]:
    from sandbox import get_backend

    left = []
    for name in sorted(backends):
        backend = get_backend(name, settings)
        try:
            left += [s for s in await backend.list() if s.state != "pooled"]
        finally:
            await backend.close()
    return left


async def sandboxes_gone(settings: bus_module.Settings, backends: set[str], row: Row, *, timeout: float = 30) -> list[Any]:
    """Sandboxes still there after ``timeout`` (teardown after ``finished`` takes a moment)."""
    deadline = time.monotonic() + timeout
    while True:
        left = await sandboxes(settings, backends)
        if not left or time.monotonic() > deadline:
            for s in left:
                row.notes.append(f"sandbox left: {s.backend} {s.id} task {s.task_id} runner {s.runner_id} {s.state} {s.detail}")
            return left
        await asyncio.sleep(0.5)


async def measure(stack: Any, row: Row, *, backends: set[str] | None = None, settle_timeout: float = 180) -> Row:
    """Fill ``row`` from the stack's stores (after the scenario's traffic is done)."""
    data = stack.settings.data_path
    ledger, tasks = await wait_settled(stack.settings, timeout=settle_timeout)
    async with stack.bus() as b:
        events = await stream_events(b)
        stream = "events"  # the audit database's name for rows from the events stream
    by_task: dict[str, list[Any]] = defaultdict(list)
    for event in events:
        by_task[event.task_id].append(event)
    expected: set[tuple[str, int]] = set()
    finished: Counter[str] = Counter()
    metered = 0.0
    for task_id, evs in by_task.items():
        ends = [e for e in evs if isinstance(e, Finished)]
        top = max(e.seq for e in evs)
        expected |= {(task_id, s) for s in range(1, top + 1)}
        if len({e.seq for e in evs}) != top:
            row.notes.append(f"{task_id}: gap in the events stream")
        spent = sum(e.cost_usd for e in evs if isinstance(e, ModelCall))
        row.gateway_usd += spent
        if ends and spent - ends[-1].cost_usd > 1e-9:
            row.uncharged_usd += spent - ends[-1].cost_usd
            row.notes.append(
                f"{task_id}: gateway metered ${spent:.6f}, finished says ${ends[-1].cost_usd:.6f} "
                f"({ends[-1].status} {ends[-1].reason or ''})"
            )
        if ends:
            finished[ends[-1].status if ends[-1].reason is None else f"{ends[-1].status} ({ends[-1].reason})"] += 1
            metered += ends[-1].cost_usd
        row.duplicate_runs += sum(isinstance(e, Started) for e in evs) > 1
        row.duplicate_events += max(0, len(ends) - 1)
    row.finished = dict(finished)
    row.submitted = row.submitted or len(tasks)
    silent = [t for t, s in tasks.items() if s not in FINAL or not any(isinstance(e, Finished) for e in by_task.get(t, []))]
    row.lost_jobs = len(silent)
    if silent:
        row.notes.append(f"unfinished: {silent[:5]}")
    audit = await wait_audit(data, stream, len(expected))
    row.events_expected = len(expected)
    row.events_stored = len(set(audit))
    row.lost_events = len(expected - set(audit))
    row.duplicate_events += len(audit) - len(set(audit))
    row.metered_usd = round(metered, 6)
    row.gateway_usd = round(row.gateway_usd, 6)
    row.uncharged_usd = round(row.uncharged_usd, 6)
    row.ledger_usd = round(sum((x or 0) for s, _a, x in ledger.values() if s == "settled") / 1_000_000, 6)
    row.open_reservations = sum(s == "reserved" for s, _a, _x in ledger.values())
    row.budget_overshoot = sum(x is not None and x > a for _s, a, x in ledger.values())
    row.sandboxes_left = len(await sandboxes_gone(stack.settings, backends or set(stack.runners.values()), row))
    return row


# --------------------------------------------------------------------------- the table

COLUMNS = (
    "scenario",
    "submitted",
    "finished",
    "events exp/stored",
    "lost jobs/events",
    "dup runs",
    "sandboxes left",
    "ledger / finished / gateway $",
    "overshoot",
    "escapes",
    "verdict",
)


def cells(row: Row) -> list[str]:
    finished = ", ".join(f"{k} {v}" for k, v in sorted(row.finished.items())) or "-"
    return [
        row.scenario,
        str(row.submitted),
        finished,
        f"{row.events_expected}/{row.events_stored}",
        f"{row.lost_jobs}/{row.lost_events}",
        str(row.duplicate_runs),
        str(row.sandboxes_left),
        f"{row.ledger_usd:.4f} / {row.metered_usd:.4f} / {row.gateway_usd:.4f}",
        str(row.budget_overshoot),
        str(row.escapes),
        row.verdict,
    ]


def markdown(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(cells(r)) + " |" for r in rows]
    return "\n".join(lines)


def print_table(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="taskbus chaos")
    for name in COLUMNS:
        table.add_column(name)
    for row in rows:
        table.add_row(*cells(row), style=None if row.verdict == "PASS" else "red")
    Console(width=200).print(table)
    for row in rows:
        for note in row.notes:
            Console().print(f"[dim]{row.scenario}: {note}[/dim]")


def write_json(rows: list[Row], path: Path, **meta: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({**meta, "rows": [r.as_dict() for r in rows]}, indent=2) + "\n")
