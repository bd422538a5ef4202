"""The load and fault scenarios: each builds its own stack, drives it through MCP HTTP,
injects its fault, then measures (``report.measure``) and returns a ``Row``.

Scale: ``ci`` (8 concurrent tasks, 200 completes) or ``full`` (32 and 2,000).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from report import Row, measure
from stack import ChaosStack, image_cache

from bus._streams import stream_health, taskbus_streams

logger = logging.getLogger(__name__)

STEPS = """
description = "Three short Bash steps (a task that is still running when a fault hits)."

[[turns]]
text = "Step one."
tool_use = [{ name = "Bash", input = { command = "sleep 1 && echo one", description = "one" } }]

[[turns]]
after_tool_result = true
text = "Step two."
tool_use = [{ name = "Bash", input = { command = "sleep 1 && echo two > out.txt", description = "two" } }]

[[turns]]
after_tool_result = true
text = "Step three."
tool_use = [{ name = "Bash", input = { command = "sleep 1 && cat out.txt", description = "three" } }]

[[turns]]
after_tool_result = true
text = "All steps done."
"""
TASK = "[script:chaos-steps] run the three steps"


@dataclass(frozen=True)
class Scale:
    name: str
    tasks: int
    completes: int
    concurrency: int = 16
    slots: int = 3


SCALES = {"ci": Scale("ci", tasks=8, completes=200), "full": Scale("full", tasks=32, completes=2000, slots=6)}


def docker_up() -> bool:
    return shutil.which("docker") is not None and subprocess.run(["docker", "info"], capture_output=True, check=False).returncode == 0


def runner_set(*, docker: bool) -> dict[str, str]:
    runners = {"r-bwrap-1": "bwrap", "r-bwrap-2": "bwrap"}
    if docker and docker_up():
        runners["r-docker-1"] = "docker"
    return runners


def text_of(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


class Load:
    """Concurrent ``run_task`` and ``complete`` calls over MCP HTTP; counts outcomes."""

    def __init__(self, stack: ChaosStack, scale: Scale) -> None:
        self.stack, self.scale = stack, scale
        self.outcomes: dict[str, int] = {}
        self.errors: list[str] = []
        self.fault_log: list[str] = []

    async def wait_done(self, fraction: float, *, timeout: float = 600) -> None:
        """Until ``fraction`` of the calls have returned (polled with a deadline)."""
        total = self.scale.tasks + self.scale.completes
        async with asyncio.timeout(timeout):
            while sum(self.outcomes.values()) < fraction * total:
                await asyncio.sleep(0.1)

    def mark(self, what: str) -> None:
        """Note a fault with how far the load had got."""
        done, total = sum(self.outcomes.values()), self.scale.tasks + self.scale.completes
        self.fault_log.append(f"{what} after {done}/{total} calls had returned")

    def _count(self, what: str) -> None:
        self.outcomes[what] = self.outcomes.get(what, 0) + 1

    async def _call(self, client: Any, tool: str, args: dict[str, Any]) -> None:
        try:
            result = await client.call_tool(tool, args)
        except Exception as exc:  # noqa: BLE001 -- a transport error while a fault is injected: counted, then measured
            self._count(f"{tool}: transport error")
            self.errors.append(f"{tool}: {type(exc).__name__}: {str(exc)[:200]}")
            return
        if result.is_error:
            self._count(f"{tool}: error")
            self.errors.append(f"{tool}: {text_of(result)[:200]}")
        else:
            self._count(f"{tool}: {result.structured_content.get('status', 'ok')}")

    async def run(self) -> None:
        sem = asyncio.Semaphore(self.scale.concurrency)

        async def complete(client: Any, i: int) -> None:
            async with sem:
                await self._call(client, "complete", {"prompt": f"ping {i}", "model": "claude-haiku-4-5"})

        async with self.stack.client() as tasks_client, self.stack.client() as completes_client, asyncio.TaskGroup() as tg:
            for _ in range(self.scale.tasks):
                tg.create_task(self._call(tasks_client, "run_task", {"description": TASK, "max_cost_usd": 0.5, "timeout_s": 300}))
            for i in range(self.scale.completes):
                tg.create_task(complete(completes_client, i))


async def wait_running(stack: ChaosStack, *, timeout: float = 180) -> list[Any]:
    """Sandboxes that are running a task (polled with a deadline)."""
    from report import sandboxes

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = [s for s in await sandboxes(stack.settings, set(stack.runners.values())) if s.state == "running"]
        if running:
            return running
        await asyncio.sleep(0.2)
    raise TimeoutError(f"no task was running within {timeout}s")


async def _with_faults(stack: ChaosStack, scale: Scale, fault: Callable[[Load], Awaitable[int]]) -> tuple[Load, int]:
    load = Load(stack, scale)
    async with asyncio.TaskGroup() as tg:
        tg.create_task(load.run())
        faults = tg.create_task(fault(load))
    return load, faults.result()


def _row(name: str, load: Load, faults: int, started: float) -> Row:
    row = Row(name, faults=faults)
    row.notes.append("calls: " + ", ".join(f"{k} {v}" for k, v in sorted(load.outcomes.items())))
    row.notes += load.fault_log
    row.notes += sorted(set(load.errors))[:5]
    row.rejected = sum(v for k, v in load.outcomes.items() if "error" in k)
    row.duration_s = round(time.monotonic() - started, 1)
    return row


def _stack(work: Path, scale: Scale, *, docker: bool = True, cluster_nodes: int = 0) -> ChaosStack:
    return ChaosStack(
        work, runners=runner_set(docker=docker), slots=scale.slots, model_scripts={"chaos-steps": STEPS}, cluster_nodes=cluster_nodes
    )


async def _idle(load: Load) -> int:
    return 0


# --------------------------------------------------------------------------- scenarios


async def load_scenario(work: Path, scale: Scale) -> Row:
    started = time.monotonic()
    async with _stack(work, scale) as stack:
        load, faults = await _with_faults(stack, scale, _idle)
        row = await measure(stack, _row("load", load, faults, started))
        _check_alive(stack, row)
    row.duration_s = round(time.monotonic() - started, 1)
    return row


class Spending:
    """Follows every event live: which runner runs which task, and which tasks have
    already spent money (a model call metered) without finishing."""

    def __init__(self) -> None:
        self.runner: dict[str, str] = {}
        self.spent: set[str] = set()
        self.done: set[str] = set()
        self.changed = asyncio.Event()

    async def on_msg(self, msg: Any) -> None:
        from bus import Finished, MessageDecodeError, ModelCall, Started, decode_event

        try:
            event = decode_event(msg.data)
        except MessageDecodeError:
            return
        if isinstance(event, Started):
            self.runner[event.task_id] = event.runner_id
        elif isinstance(event, ModelCall):
            self.spent.add(event.task_id)
        elif isinstance(event, Finished):
            self.done.add(event.task_id)
        self.changed.set()

    async def victim(self, *, timeout: float = 120) -> str | None:
        """The runner of a task that has spent money and is still running."""
        async with asyncio.timeout(timeout):
            while True:
                busy = [self.runner[t] for t in self.spent - self.done if t in self.runner]
                if busy:
                    return busy[0]
                self.changed.clear()
                await self.changed.wait()


async def runner_kill_scenario(work: Path, scale: Scale, *, kills: int = 3) -> Row:
    """SIGKILL the runner of a task that has already spent money, several times during the
    load, restarting it each time (its restart reaps the dead life's sandboxes)."""
    started = time.monotonic()
    async with _stack(work, scale) as stack, stack.bus() as probe:
        spending = Spending()
        sub = await probe.nc.subscribe(probe.subjects.events_all(), cb=spending.on_msg)

        async def fault(load: Load) -> int:
            done = 0
            for _ in range(kills):
                try:
                    victim = await spending.victim()
                except TimeoutError:
                    break
                load.mark(f"SIGKILL {victim}")
                await stack.restart(victim)
                spending.runner = {t: r for t, r in spending.runner.items() if r != victim}
                done += 1
            return done

        load, faults = await _with_faults(stack, scale, fault)
        await sub.unsubscribe()
        row = await measure(stack, _row("runner SIGKILL", load, faults, started))
        _check_alive(stack, row)
    return row


async def nats_restart_scenario(work: Path, scale: Scale) -> Row:
    """Stop nats-server mid-load and start it again on the same port and file store."""
    started = time.monotonic()
    async with _stack(work, scale, docker=False) as stack:

        async def fault(load: Load) -> int:
            await wait_running(stack)
            await load.wait_done(0.25)
            load.mark("nats-server killed (restarted 2 s later)")
            await asyncio.to_thread(stack.restart_nats, down_s=2.0)
            return 1

        load, faults = await _with_faults(stack, scale, fault)
        row = await measure(stack, _row("nats-server restart", load, faults, started))
        _check_alive(stack, row)
    return row


async def audit_kill_scenario(work: Path, scale: Scale) -> Row:
    """SIGKILL the audit subscriber mid-load, restart it; it catches up and the chain verifies."""
    started = time.monotonic()
    async with _stack(work, scale, docker=False) as stack:

        async def fault(load: Load) -> int:
            await wait_running(stack)
            await load.wait_done(0.25)
            load.mark("audit SIGKILL (restarted 2 s later)")
            await asyncio.to_thread(stack.children["audit"].kill)
            await asyncio.sleep(2)  # the outage: events pile up in the stream meanwhile
            stack.children["audit"].start()
            return 1

        load, faults = await _with_faults(stack, scale, fault)
        row = await measure(stack, _row("audit SIGKILL", load, faults, started))
        verdict = audit_verify(stack)
        row.notes.append(f"audit verify: {verdict}")
        if not verdict.get("ok"):
            row.lost_events = row.lost_events or -1
        _check_alive(stack, row)
    return row


async def server_kill_scenario(work: Path, scale: Scale) -> Row:
    """SIGKILL the MCP server while tasks run; after restart get_task returns each result
    and every reservation is settled."""
    started = time.monotonic()
    n = max(2, scale.tasks // 2)
    async with _stack(work, scale, docker=False) as stack:
        async with stack.client() as client:
            ids = []
            for _ in range(n):
                queued = await client.call_tool("run_task", {"description": TASK, "wait": False, "max_cost_usd": 0.5})
                assert not queued.is_error, text_of(queued)
                ids.append(queued.structured_content["task_id"])
        await wait_running(stack)
        await stack.restart("server")
        results = {}
        async with stack.client() as client:
            deadline = time.monotonic() + 240
            while len(results) < n and time.monotonic() < deadline:
                for task_id in ids:
                    if task_id in results:
                        continue
                    shown = await client.call_tool("get_task", {"task_id": task_id})
                    status = shown.structured_content.get("status")
                    if status not in ("accepted", "running"):
                        results[task_id] = shown.structured_content
                await asyncio.sleep(0.5)
        row = await measure(stack, Row("server SIGKILL", faults=1))
        row.notes.append(
            "get_task after restart: "
            + ", ".join(f"{v['status']}" + (f" ({v['reason']})" if v.get("reason") else "") for v in results.values())
        )
        row.lost_jobs += n - len(results)
        no_result = [t for t, v in results.items() if v["status"] == "succeeded" and not v.get("result")]
        if no_result:
            row.notes.append(f"succeeded without a result: {no_result}")
            row.lost_jobs += len(no_result)
        _check_alive(stack, row)
    row.duration_s = round(time.monotonic() - started, 1)
    return row


async def cluster_load_scenario(work: Path, scale: Scale) -> Row:
    """The load scenario on a 3-node NATS cluster, every stream and bucket at 3 replicas."""
    started = time.monotonic()
    async with _stack(work, scale, cluster_nodes=3) as stack:
        load, faults = await _with_faults(stack, scale, _idle)
        row = await measure(stack, _row("load on a 3-node cluster", load, faults, started))
        await _check_replicas(stack, row)
        _check_alive(stack, row)
    row.duration_s = round(time.monotonic() - started, 1)
    return row


async def cluster_node_kill_scenario(work: Path, scale: Scale) -> Row:
    """SIGKILL the NATS node the MCP server is connected to (else the jobs stream's leader)
    mid-load on a 3-node cluster with replicas 3; keep it down while the load goes on (the
    processes reconnect to the other two), then restart it and check that it rejoins: every
    stream back to three current copies. Nothing acked may be lost; the audit chain verifies."""
    started = time.monotonic()
    async with _stack(work, scale, docker=False, cluster_nodes=3) as stack:

        async def fault(load: Load) -> int:
            await wait_running(stack)
            await load.wait_done(0.25)
            victim, why = await _victim_node(stack)
            assert stack.cluster is not None
            name = stack.cluster.nodes[victim].name
            load.mark(f"NATS node {name} ({why}) SIGKILLed")
            await asyncio.to_thread(stack.kill_nats_node, victim)
            await load.wait_done(0.6)  # the load carries on on two nodes
            load.mark(f"NATS node {name} restarted")
            await asyncio.to_thread(stack.restart_nats_node, victim)
            return 1

        load, faults = await _with_faults(stack, scale, fault)
        row = await measure(stack, _row("NATS node SIGKILL (cluster)", load, faults, started))
        await _check_replicas(stack, row)
        verdict = audit_verify(stack)
        row.notes.append(f"audit verify: {verdict}")
        if not verdict.get("ok"):
            row.lost_events = row.lost_events or -1
        _check_alive(stack, row)
    row.duration_s = round(time.monotonic() - started, 1)
    return row


def _connections(url: str) -> list[dict[str, Any]]:
    """The ``connections`` of a nats-server monitoring ``/connz`` reply (blocking)."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        return json.loads(reply.read()).get("connections") or []


async def _victim_node(stack: ChaosStack) -> tuple[int, str]:
    """The node the MCP server's NATS connection is on (its monitoring ``/connz``), else the
    node leading the jobs stream."""
    assert stack.cluster is not None
    for i, node in enumerate(stack.cluster.nodes):
        url = f"http://{node.host}:{node.monitor_port}/connz?limit=1024"
        conns = await asyncio.to_thread(_connections, url)
        if any(c.get("name") == "taskbus-server" for c in conns):
            return i, "the MCP server's node"
    async with stack.bus() as b:
        leader = (await b.js.stream_info(b.subjects.jobs_stream)).cluster.leader
    names = [n.name for n in stack.cluster.nodes]
    return names.index(leader), "the jobs stream's leader"


async def _check_replicas(stack: ChaosStack, row: Row, *, timeout: float = 120) -> None:
    """Every stream of the stack at 3 replicas with 3 current copies (polled with a deadline:
    a restarted node catches up first). A stream that does not get there is a failure."""
    began = time.monotonic()
    async with stack.bus() as b:
        while True:
            health = [h for h in [await stream_health(b.js, n) for n in taskbus_streams(b.subjects)] if h.exists]
            bad = [h for h in health if h.replicas != 3 or not h.leader or len(h.current) != 2]
            if not bad:
                row.notes.append(
                    f"replicas: {len(health)} streams at R3, every copy current {time.monotonic() - began:.1f} s after the load"
                )
                return
            if time.monotonic() - began > timeout:
                row.crashed += [f"stream {h.stream} not at 3 current copies: {h}" for h in bad]
                return
            await asyncio.sleep(0.5)


def audit_verify(stack: ChaosStack) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "cli", "audit", "verify", "--json"],
        env=stack.env(),
        capture_output=True,
        timeout=120,
        check=False,
        cwd=str(image_cache().parent),
    )
    try:
        return json.loads(proc.stdout)
    except ValueError:
        return {"ok": False, "stderr": proc.stderr.decode()[-500:]}


def _check_alive(stack: ChaosStack, row: Row) -> None:
    row.crashed += [name for name, alive in stack.alive().items() if not alive]


SCENARIOS: dict[str, Callable[[Path, Scale], Awaitable[Row]]] = {
    "load": load_scenario,
    "runner-kill": runner_kill_scenario,
    "nats-restart": nats_restart_scenario,
    "audit-kill": audit_kill_scenario,
    "server-kill": server_kill_scenario,
    "cluster-load": cluster_load_scenario,
    "cluster-node-kill": cluster_node_kill_scenario,
}
CLUSTER_SCENARIOS = ("cluster-load", "cluster-node-kill")


def env_scale() -> Scale:
    return SCALES[os.environ.get("TASKBUS_CHAOS_SCALE", "ci")]
