"""Warm agents: sandboxes with Claude Code already started inside, idle on stdin.

    pool = WarmAgents(context, busy=lambda: len(running), slots=2)   # context: RunnerContext
    tg.create_task(pool.run(stopping))          # refills in the background
    agent = pool.take(job.policy)               # a WarmAgent of the task's class, or None
    ...
    await pool.close()                          # destroys every idle one

A warm agent is a sandbox (workspace filesystem mounted, loopback forwarder listening)
with ``claude -p --input-format=stream-json`` started in it; it counts as ready once
Claude Code answered an ``initialize`` control request (it has started and reads its
stdin; it asks the model nothing), and then waits for its first user message. Nothing of any task is in it: no gateway and no hook socket exist yet
(its Claude Code has no route to a model while it waits), its workspace is empty, its
command line carries only what its class fixes. ``AgentSandbox`` adopts it for one
task (task files, gateway, hook with that task's policy, the task's wall clock), and the
sandbox is destroyed at the end of that task like any other; it is never reused.

The class (``warm_class``) is what Claude Code or the sandbox fix at start: the tool
grants (``--tools``/``--allowedTools``), max turns, cpu/memory/pids/disk/wall-clock
limits and the network mode. The model is not in it: the task's model is set with a
``set_model`` control request before its message (checked against Claude Code 2.1.197:
its init event then names that model). Allowed agents and skills and the cost cap are
the hook's and the gateway's, started per task. Tasks with catalog entries or a project
mount start cold (their home and mounts are per task).

Which classes are kept warm: the ``warm_agents_classes`` classes most recently asked
for on this runner (kept across restarts in ``demand_file``: class fields only), ``warm_agents_per_class`` each, at most ``warm_agents_total`` (and
never more than the runner's slots) idle at once, within ``warm_agents_memory_mb`` of
memory limits; refilling happens one agent at a time and only while a slot is free.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
import shutil
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec

from bus import Policy, SandboxError

from .._gateway import new_placeholder_key
from .._privdirs import ensure_dir
from .._sandboxes import Execution, Sandbox, spec_from_policy
from .._sandboxes._spec import SANDBOX_GID, SANDBOX_UID
from .._sandboxes._wsmount import mount_workspace_async, unmount_all
from .._tools import find_claude
from ._agent import shared_folders, start_forwarder
from ._claude import MANAGED_SETTINGS, OPT_DIR, claude_argv, claude_env
from ._context import RunnerContext
from ._streamjson import ControlResponseLine, parse_line

logger = logging.getLogger(__name__)

START_TIMEOUT_S = 60.0
INIT_ID = "taskbus-init"
INITIALIZE = json.dumps({"type": "control_request", "request_id": INIT_ID, "request": {"subtype": "initialize"}}).encode() + b"\n"
"""Sent at start; the answer says Claude Code is up (it asks the model nothing)."""
RETRY_AFTER_S = 10.0
IDLE_MARGIN_S = 60.0


def warm_eligible(policy: Policy) -> bool:
    """Can a task with ``policy`` run on a warm agent? (no catalog, no project mount)"""
    return (
        policy.kind == "task"
        and policy.network == "model-api"
        and not policy.catalog
        and (policy.fs_access == "none" or not policy.project_root)
    )


CLASS_FIELDS = ("tools", "max_turns", "cpus", "memory_mb", "pids", "disk_mb", "timeout_s", "network")
"""The Policy fields a warm agent is started with (and fixed to); ``model`` is only its first model."""


def class_template(policy: Policy, *, task_id: str) -> Policy:
    """A policy holding only what a warm agent of ``policy``'s class is started from
    (nothing of the task: no key, profile, project, catalog or cost cap)."""
    return Policy(
        task_id=task_id,
        kind="task",
        key_id="warm",
        profile="warm",
        model=policy.model,
        models=[policy.model],
        **{name: getattr(policy, name) for name in CLASS_FIELDS},
    )


def demand_file(data_path: Path, runner_id: str) -> Path:
    """Where runner ``runner_id`` keeps the task classes it keeps warm, across restarts."""
    return data_path / "runs" / f"{runner_id}.warm-classes.json"


def seed_demand(path: Path, policies: list[Policy]) -> bool:
    """Give a runner that has no warm classes yet the classes of ``policies`` (class fields
    only), so its first tasks of those classes already find a warm agent (``taskbus up``
    seeds its runner with the demo's class). A runner's own record is never overwritten.
    Returns whether the file was written."""
    if path.exists():
        return False
    templates = [class_template(p, task_id="warm") for p in policies if warm_eligible(p)]
    if not templates:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(templates))
    tmp.replace(path)
    return True


def warm_class(policy: Policy) -> str:
    """The class of agents a task with ``policy`` can take: 12 hex digits of a hash of
    what is fixed when Claude Code and its sandbox start."""
    fixed = {name: getattr(policy, name) for name in CLASS_FIELDS} | {"tools": sorted(policy.tools), "cpus": float(policy.cpus)}
    return hashlib.sha256(json.dumps(fixed, sort_keys=True).encode()).hexdigest()[:12]


class WarmAgent:
    """One idle agent. ``start()`` makes it; a task adopts it (``AgentSandbox(warm=...)``);
    ``close()`` destroys it and removes its host folders (idempotent)."""

    def __init__(self, template: Policy, *, klass: str, context: RunnerContext) -> None:
        self.id = "warm-" + secrets.token_hex(6)
        self.klass = klass
        self.policy = class_template(template, task_id=self.id)
        self.context = context
        self.run_dir = context.run_root / "warm" / self.id
        self.sock_dir = context.sock_dir(self.id)
        self.workspace = self.run_dir / "workspace"
        self.placeholder = new_placeholder_key()
        self.claude_binary = ""
        self.sandbox: Sandbox | None = None
        self.claude: Execution | None = None
        self._stdin: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.sent = False
        self.started_at = time.monotonic()
        self.stack = contextlib.AsyncExitStack()
        self._closed = False

    @property
    def memory_mb(self) -> int:
        return self.policy.memory_mb

    def healthy(self) -> bool:
        """Still waiting: its sandbox and its Claude Code are alive."""
        return (
            self.sandbox is not None
            and self.claude is not None
            and self.claude.returncode is None
            and not self.sandbox.timed_out
            and not self._closed
        )

    async def start(self, *, idle_s: float) -> None:
        try:
            await self._start(self.context, idle_s=idle_s)
        except BaseException:
            await asyncio.shield(self.close())
            raise

    async def _start(self, context: RunnerContext, *, idle_s: float) -> None:
        opt_dir, etc_dir = shared_folders(context.shared_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        await mount_workspace_async(self.workspace, self.policy.disk_mb, SANDBOX_UID, SANDBOX_GID)
        ensure_dir(self.sock_dir, 0o755)
        claude = find_claude(context.settings)
        self.claude_binary = f"/opt/claude/{claude.name}"
        spec = spec_from_policy(
            self.policy,
            runner_id=context.runner_id,
            workspace=str(self.workspace),
            ro_mounts=[(str(claude.parent), "/opt/claude"), (str(opt_dir), OPT_DIR), (str(etc_dir), str(Path(MANAGED_SETTINGS).parent))],
            socket_dir=str(self.sock_dir),
            # idle time plus the task's own limit; the task restarts the clock when it takes it
            timeout_s=idle_s + self.policy.timeout_s + IDLE_MARGIN_S,
            late_sockets=True,
        )
        self.sandbox = await self.stack.enter_async_context(await context.backend.create(spec))
        self.workspace = self.sandbox.workspace
        await start_forwarder(self.sandbox, self.stack, _quiet, name=self.id)
        argv = [*claude_argv(self.claude_binary, self.policy), "--input-format=stream-json"]
        self._stdin.put_nowait(INITIALIZE)
        self.claude = await self.sandbox.exec(argv, env=claude_env(self.placeholder), stdin=self._lines())
        await self._initialized(self.claude)

    async def _lines(self) -> AsyncIterator[bytes]:
        while (line := await self._stdin.get()) is not None:
            yield line

    async def _initialized(self, claude: Execution) -> None:
        """Wait for the answer to ``initialize``: Claude Code has started and reads its stdin."""
        async for stream, line in claude:
            parsed = parse_line(line) if stream == "stdout" and line.startswith("{") else None
            if isinstance(parsed, ControlResponseLine) and parsed.response is not None and parsed.response.request_id == INIT_ID:
                if parsed.response.subtype != "success":
                    raise SandboxError(f"Claude Code refused initialize: {line[:300]}")
                return
            logger.debug("warm agent %s before its task: %s", self.id, line[:300])
        raise SandboxError(f"Claude Code of warm agent {self.id} exited while starting")

    def send(self, data: bytes) -> Execution:
        """Give the agent its task (``first_message``) and close its stdin."""
        assert self.claude is not None and not self.sent
        self.sent = True
        self._stdin.put_nowait(data)
        self._stdin.put_nowait(None)
        return self.claude

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            await self.stack.aclose()
        finally:
            await asyncio.to_thread(_remove, self.run_dir, self.sock_dir)

    async def kill(self) -> None:
        """Destroy the sandbox (every process in it gone); the host folders stay."""
        await self.stack.aclose()


async def _quiet(line: str) -> None:
    logger.debug("warm agent: %s", line)


def _remove(run_dir: Path, sock_dir: Path) -> None:
    unmount_all(run_dir / "workspace")
    for path in (run_dir, sock_dir):
        shutil.rmtree(path, ignore_errors=True)


class WarmAgents:
    """The runner's pool of warm agents, keyed by class, refilled by ``run()``."""

    def __init__(
        self,
        context: RunnerContext,
        *,
        busy: Callable[[], int],
        slots: int,
        demand_file: Path | None = None,
    ) -> None:
        self.context = context
        self.settings = context.settings
        self._busy = busy
        self.slots = slots
        self.demand: OrderedDict[str, Policy] = OrderedDict()
        """Class -> a policy of the latest task of that class (its class fields only are used)."""
        self.idle: dict[str, list[WarmAgent]] = {}
        self._retired: list[WarmAgent] = []
        self._wake = asyncio.Event()
        self._starting = 0
        self.taken = 0
        self.missed = 0
        self._demand_file = demand_file
        """Where the recent classes are kept across restarts (class templates only)."""
        self._demand_dirty = False
        self._load_demand()

    def _load_demand(self) -> None:
        if self._demand_file is None or not self._demand_file.is_file():
            return
        try:
            templates = msgspec.json.decode(self._demand_file.read_bytes(), type=list[Policy])
        except (OSError, msgspec.DecodeError) as exc:
            logger.warning("runner %s: ignoring %s: %s", self.context.runner_id, self._demand_file, exc)
            return
        for template in templates[-self.settings.warm_agents_classes :]:
            if warm_eligible(template):
                self.demand[warm_class(template)] = class_template(template, task_id="warm")

    def _save_demand(self) -> None:
        if self._demand_file is None or not self._demand_dirty:
            return
        self._demand_dirty = False
        tmp = self._demand_file.with_suffix(".tmp")
        try:
            tmp.write_bytes(msgspec.json.encode(list(self.demand.values())))
            tmp.replace(self._demand_file)
        except OSError as exc:
            logger.warning("runner %s: cannot save its warm classes to %s: %s", self.context.runner_id, self._demand_file, exc)

    @property
    def enabled(self) -> bool:
        return self.settings.warm_agents_per_class > 0 and self.settings.warm_agents_total > 0

    @property
    def capacity(self) -> int:
        return min(self.settings.warm_agents_total, self.slots)

    def counts(self) -> dict[str, int]:
        """Idle warm agents per class."""
        return {k: len(v) for k, v in self.idle.items() if v}

    def idle_total(self) -> int:
        return sum(len(v) for v in self.idle.values())

    def take(self, policy: Policy) -> WarmAgent | None:
        """A healthy idle agent of ``policy``'s class (it leaves the pool), or None (then
        the task starts cold). Either way the class counts as asked for."""
        if not self.enabled or not warm_eligible(policy):
            return None
        klass = warm_class(policy)
        self.demand[klass] = class_template(policy, task_id="warm")
        self.demand.move_to_end(klass)
        self._demand_dirty = True
        while len(self.demand) > self.settings.warm_agents_classes:
            old, _ = self.demand.popitem(last=False)
            self._retired.extend(self.idle.pop(old, []))
        self._wake.set()
        agents = self.idle.get(klass, [])
        while agents:
            agent = agents.pop(0)
            if agent.healthy():
                self.taken += 1
                return agent
            self._retired.append(agent)
        self.missed += 1
        return None

    def wake(self) -> None:
        """A slot was freed: maybe refill now."""
        self._wake.set()

    async def run(self, stopping: asyncio.Event) -> None:
        """Refill until ``stopping`` is set: one agent at a time, only while a slot is free."""
        while not stopping.is_set():
            await self._retire()
            await asyncio.to_thread(self._save_demand)
            klass = self._next_class()
            if klass is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self._wake.wait()
                continue
            agent = WarmAgent(self.demand[klass], klass=klass, context=self.context)
            self._starting += 1
            began = time.monotonic()
            try:
                async with asyncio.timeout(START_TIMEOUT_S):
                    await agent.start(idle_s=self.settings.warm_agent_max_idle_s)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                logger.warning("runner %s: starting a warm agent of class %s failed: %s", self.context.runner_id, klass, exc)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(RETRY_AFTER_S):
                        await stopping.wait()
                continue
            finally:
                self._starting -= 1
            if klass in self.demand and not stopping.is_set():
                self.idle.setdefault(klass, []).append(agent)
                logger.info(
                    "runner %s: warm agent %s of class %s ready in %.0f ms",
                    self.context.runner_id,
                    agent.id,
                    klass,
                    (time.monotonic() - began) * 1000,
                )
            else:
                self._retired.append(agent)

    def _next_class(self) -> str | None:
        if not self.enabled or self._busy() >= self.slots:
            return None
        idle = [a for agents in self.idle.values() for a in agents]
        if len(idle) >= self.capacity:
            return None
        memory = sum(a.memory_mb for a in idle)
        for klass in reversed(self.demand):  # most recent first
            if len(self.idle.get(klass, [])) >= self.settings.warm_agents_per_class:
                continue
            if memory + self.demand[klass].memory_mb > self.settings.warm_agents_memory_mb:
                continue
            return klass
        return None

    async def _retire(self) -> None:
        """Destroy agents that died, idled too long, or whose class is no longer kept."""
        horizon = time.monotonic() - self.settings.warm_agent_max_idle_s
        for klass, agents in self.idle.items():
            keep = [a for a in agents if a.healthy() and a.started_at >= horizon]
            self._retired.extend(a for a in agents if a not in keep)
            self.idle[klass] = keep
        while self._retired:
            agent = self._retired.pop()
            await asyncio.shield(agent.close())

    async def close(self) -> None:
        """Destroy every idle agent. Safe to call twice."""
        for agents in self.idle.values():
            self._retired.extend(agents)
        self.idle.clear()
        self.demand.clear()
        while self._retired:
            agent = self._retired.pop()
            try:
                await asyncio.shield(agent.close())
            except Exception:
                logger.exception("runner %s: destroying warm agent %s failed; the reaper will finish it", self.context.runner_id, agent.id)
