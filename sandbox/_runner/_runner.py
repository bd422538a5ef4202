"""The sandbox runner process: pulls jobs, runs them, reports, heartbeats, reaps.

    async with Runner(settings, backend="bwrap", slots=2) as runner:
        await runner.wait_closed()          # or: await runner.shutdown(grace_s=30)

One durable pull consumer per job kind is shared by every runner (JetStream hands
each job to one of them). ``task`` jobs use the runner's slots; ``complete`` jobs,
which hold no sandbox, have their own larger limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import re
import shutil
import socket
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

import nats.errors
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig

from bus import (
    JOB_KINDS,
    Backoff,
    Bus,
    ConfigError,
    Heartbeat,
    Job,
    JobKind,
    Settings,
    Subjects,
    decode_heartbeat,
    encode,
    load_or_create_job_secret,
    patient,
    taskbus_version,
)

from .._gateway import Upstream
from .._privdirs import SOCKET_ROOT_RECORD, make_socket_root, remove_recorded_socket_root
from .._providers import AnthropicProvider, ModelProvider
from .._sandboxes import SandboxBackend, backend_problem, get_backend
from .._sandboxes._wsmount import unmount_under
from ._agent import prepare_shared
from ._cli_provider import ClaudeCliProvider
from ._complete import run_complete
from ._context import RunnerContext
from ._events import TaskEvents
from ._job import JobHandler
from ._metrics import RunnerMetrics, TimedBackend, warm_sandboxes
from ._task import TaskOutcome, TaskRun
from ._warm import WarmAgents, demand_file

logger = logging.getLogger(__name__)

COMPLETE_CONCURRENCY = 64
REAP_EVERY_S = 30.0


def default_runner_id(backend: str) -> str:
    host = re.sub(r"[^A-Za-z0-9_-]", "-", socket.gethostname())[:60] or "host"
    return f"{host}-{backend}"


class Runner:
    def __init__(
        self,
        settings: Settings,
        *,
        backend: str | None = None,
        slots: int | None = None,
        runner_id: str | None = None,
        kinds: tuple[str, ...] = JOB_KINDS,
        complete_concurrency: int = COMPLETE_CONCURRENCY,
    ) -> None:
        if not settings.nats_url:
            raise ConfigError("TASKBUS_NATS_URL", "a runner needs a NATS server; set it (`taskbus up` does this for you)")
        self.settings = settings
        self.backend_name = backend or settings.sandbox_backend
        self.slots = slots or settings.runner_slots
        self.id = runner_id or default_runner_id(self.backend_name)
        known: dict[str, JobKind] = {kind: kind for kind in JOB_KINDS}
        self.kinds = tuple(known[kind] for kind in kinds if kind in known)
        self.subjects = Subjects(settings.subject_prefix)
        self._task_slots = asyncio.Semaphore(self.slots)
        self._complete_slots = asyncio.Semaphore(complete_concurrency)
        self._stopping = asyncio.Event()
        self._closed = asyncio.Event()
        self.backend_ready = asyncio.Event()
        """Set once the backend self-check passed (at once when no job kind needs a sandbox)."""
        self.problem = ""
        """Why this runner cannot run sandboxed jobs yet (with the fixing command); "" when it can."""
        self._stack = contextlib.AsyncExitStack()
        self._tg: asyncio.TaskGroup | None = None
        self._jobs: set[asyncio.Task[Any]] = set()
        self._peers: dict[str, float] = {}
        self._peer_tasks: dict[str, set[str]] = {}
        self.bus: Bus | None = None
        self.backend: SandboxBackend | None = None
        self.handler: JobHandler | None = None
        self.upstream: Upstream | None = None
        self.provider: ModelProvider | None = None
        self.metrics = RunnerMetrics(self.id, self.backend_name)
        self.metrics_port: int | None = None
        self.warm: WarmAgents | None = None
        self.context: RunnerContext | None = None
        """What every sandboxed run shares; set once the backend, upstream and folders exist."""
        self._tasks_running = 0

    # ------------------------------------------------------------------ lifecycle
    async def __aenter__(self) -> Runner:
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.shutdown()

    async def _start(self) -> None:
        s = self.settings
        if s.runner_metrics_port:
            self.metrics_port = self.metrics.serve(s.runner_metrics_host, s.runner_metrics_port)
            self._stack.callback(self.metrics.close)
        self.bus = await self._stack.enter_async_context(await Bus.for_settings(s, name=f"runner-{self.id}"))
        await self.bus.ensure_streams(
            events_max_age_s=s.events_max_age_days * 86_400,
            artifacts_max_bytes=s.artifacts_store_max_bytes,
            artifacts_max_age_s=s.artifacts_store_max_age_days * 86_400,
        )
        secret = load_or_create_job_secret(s)
        self.handler = JobHandler(
            self.bus,
            secret=secret,
            runner_id=self.id,
            max_bytes=s.max_message_bytes,
            ack_wait_s=s.job_ack_wait_s,
            is_running=self.peer_runs,
            peers_heard=self.peers_heard,
            on_event=self.metrics.observe_event,
        )
        self.upstream = await self._stack.enter_async_context(Upstream(s))
        needs_sandbox = "task" in self.kinds or s.complete_provider == "claude-cli"
        if needs_sandbox:
            self.backend = TimedBackend(get_backend(self.backend_name, s), self.metrics)
            self.metrics.watch_pool(self.backend._inner)
            self._stack.push_async_callback(self.backend.close)
            await self._reap(startup=True)
        self._run_root = run_root(s, self.id)
        if self._run_root.exists():  # left by a previous life of this runner (its sandboxes are reaped)
            await asyncio.to_thread(remove_recorded_socket_root, self._run_root / SOCKET_ROOT_RECORD)
            await asyncio.to_thread(_remove_run_root, self._run_root)
        self._run_root.mkdir(parents=True, exist_ok=True)
        self._socket_root = make_socket_root()  # fresh, random, 0700: nothing a local user made first
        (self._run_root / SOCKET_ROOT_RECORD).write_text(str(self._socket_root))
        self._shared_dir = self._run_root / "shared"
        await asyncio.to_thread(prepare_shared, self._shared_dir)
        if self.backend is not None:
            self.context = RunnerContext(s, self.backend, self.upstream, self.id, self._run_root, self._socket_root, self._shared_dir)
        if s.complete_provider == "claude-cli":
            assert self.context is not None
            self.provider = ClaudeCliProvider(self.context)
        else:
            self.provider = await self._stack.enter_async_context(AnthropicProvider(s, upstream=self.upstream))
        await self.bus.nc.subscribe(self.subjects.runners_all(), cb=self._on_heartbeat)
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        for kind in self.kinds:
            # the consumer create can go unanswered for a while on a cluster that is still
            # electing (or a loaded machine); the same durable config makes a retry harmless
            sub = await patient(functools.partial(self._job_consumer, kind), f"the {kind} job consumer")
            self._tg.create_task(self._pull_loop(sub, kind), name=f"pull-{kind}")
        await self._self_check()
        if self.context is not None and "task" in self.kinds and s.warm_agents_per_class > 0:
            self.warm = WarmAgents(
                self.context, busy=lambda: self._tasks_running, slots=self.slots, demand_file=demand_file(s.data_path, self.id)
            )
            self._stack.push_async_callback(self.warm.close)  # before the backend closes
            self._tg.create_task(self.warm.run(self._stopping), name="warm-agents")
        self._tg.create_task(self._heartbeat_loop(), name="heartbeat")
        if self.backend is not None:
            self._tg.create_task(self._reap_loop(), name="reaper")

    async def _job_consumer(self, kind: JobKind) -> Any:
        s = self.settings
        assert self.bus is not None
        return await self.bus.js.pull_subscribe(
            self.subjects.jobs(kind),
            durable=self.subjects.job_consumer(kind),
            stream=self.subjects.jobs_stream,
            config=ConsumerConfig(
                ack_policy=AckPolicy.EXPLICIT,
                ack_wait=s.job_ack_wait_s,
                max_deliver=s.job_max_deliver,
                max_ack_pending=-1,
            ),
        )

    async def _self_check(self) -> None:
        """Can the backend run a task here? Sets ``backend_ready``, else logs what fixes it."""
        if self.backend_ready.is_set():
            return
        if self.backend is not None:
            problem = await asyncio.to_thread(backend_problem, self.settings, self.backend_name)
            if problem:
                if problem != self.problem:
                    logger.error("runner %s cannot run sandboxed jobs yet: %s", self.id, problem)
                self.problem = problem
                return
        self.problem = ""
        self.backend_ready.set()
        logger.info("runner %s ready: backend %s, %d slots, kinds %s", self.id, self.backend_name, self.slots, ",".join(self.kinds))

    @property
    def running(self) -> list[str]:
        return sorted(self.handler.running) if self.handler else []

    async def wait_closed(self) -> None:
        await self._closed.wait()

    async def shutdown(self, *, grace_s: float = 30.0) -> None:
        """Stop pulling; let running tasks finish for ``grace_s``; then cancel them
        (``finished cancelled``, reason ``runner_shutdown``). Safe to call twice."""
        if self._closed.is_set():
            return
        self._stopping.set()
        if self._jobs:
            logger.info("runner %s stopping: waiting up to %.0fs for %d job(s)", self.id, grace_s, len(self._jobs))
            _done, pending = await asyncio.wait(set(self._jobs), timeout=grace_s)
            if pending and self.handler:
                for task_id in list(self.handler.running):
                    self.handler.cancel(task_id, "runner_shutdown")
                await asyncio.wait(pending, timeout=15)
        if self._tg is not None:
            tg, self._tg = self._tg, None
            for task in list(self._jobs):
                task.cancel()
            try:
                await tg.__aexit__(None, None, None)
            except BaseException:
                logger.exception("runner %s: a background task failed at shutdown", self.id)
        await self._stack.aclose()
        if getattr(self, "_socket_root", None) is not None:
            await asyncio.to_thread(shutil.rmtree, self._socket_root, True)
        self._closed.set()
        logger.info("runner %s stopped", self.id)

    # ------------------------------------------------------------------ pulling
    async def _pull_loop(self, sub: Any, kind: str) -> None:
        slots = self._task_slots if kind == "task" else self._complete_slots
        batch_max = 1 if kind == "task" else 16
        if kind == "task" or self.settings.complete_provider == "claude-cli":
            while not (self.backend_ready.is_set() or self._stopping.is_set()):  # jobs wait in the stream
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(1.0):
                        await self.backend_ready.wait()
        # After a NATS outage every runner's pull loops retry at once: the jitter spreads them.
        backoff = Backoff(0.2, 5.0)
        try:
            while not self._stopping.is_set():
                await slots.acquire()
                taken = 1
                while taken < batch_max and not slots.locked():
                    await slots.acquire()
                    taken += 1
                try:
                    msgs = await sub.fetch(batch=taken, timeout=1.0)
                    backoff.reset()
                except (TimeoutError, nats.errors.TimeoutError):
                    msgs = []
                    backoff.reset()
                except Exception as exc:  # reconnecting, stream briefly gone: retry
                    msgs = []
                    delay = await backoff.sleep(until=self._stopping)
                    logger.warning("runner %s: fetching %s jobs failed (%s); retried after %.2fs", self.id, kind, exc, delay)
                for _ in range(taken - len(msgs)):
                    slots.release()
                for msg in msgs:
                    if self._stopping.is_set():
                        await msg.nak()
                        slots.release()
                        continue
                    self._spawn(msg, kind, slots)
        finally:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    def _spawn(self, msg: Msg, kind: str, slots: asyncio.Semaphore) -> None:
        assert self._tg is not None and self.handler is not None
        handler = self.handler
        execute = self._execute_task if kind == "task" else self._execute_complete

        async def job() -> None:
            try:
                await handler.handle(msg, kind, execute)
            except asyncio.CancelledError:
                raise
            except Exception:
                logger.exception("runner %s: job on %s failed; it will be redelivered", self.id, msg.subject)
            finally:
                slots.release()

        task = self._tg.create_task(job(), name=f"job-{kind}")
        self._jobs.add(task)
        task.add_done_callback(self._jobs.discard)

    async def _execute_task(self, job: Job, events: TaskEvents) -> TaskOutcome:
        assert self.context is not None
        warm = self.warm.take(job.policy) if self.warm is not None else None
        run = TaskRun(self.context, job, events, warm=warm, later=self._later)
        self._tasks_running += 1
        try:
            return await run.run()
        finally:
            self._tasks_running -= 1
            if self.warm is not None:
                self.warm.wake()

    def _later(self, cleanup: Coroutine[Any, Any, None]) -> None:
        """Run ``cleanup`` in the runner's task group (after the job reported ``finished``)."""

        async def run() -> None:
            try:
                await cleanup
            except Exception:
                logger.exception("runner %s: removing a finished task's sandbox failed; the reaper will finish it", self.id)
            finally:
                if self.warm is not None:
                    self.warm.wake()

        assert self._tg is not None  # jobs run in the task group, so it is open while one reports
        self._tg.create_task(run(), name="task-cleanup")

    async def _execute_complete(self, job: Job, events: TaskEvents) -> TaskOutcome:
        assert self.provider is not None
        async with asyncio.timeout(job.policy.timeout_s):
            return await run_complete(job, events, self.provider)

    # ------------------------------------------------------------------ heartbeats and reaping
    async def _heartbeat_loop(self) -> None:
        assert self.bus is not None
        while not self._stopping.is_set():
            await self._self_check()
            beat = Heartbeat(
                runner_id=self.id,
                backend=self.backend_name,
                slots=self.slots,
                running=self.running,
                version=taskbus_version(),
                host=socket.gethostname(),
                pid=os.getpid(),
                kinds=list(self.kinds),
                ready=self.backend_ready.is_set(),
                problem=self.problem,
                warm=warm_sandboxes(self.backend) + (self.warm.idle_total() if self.warm else 0),
                warm_agents=self.warm.counts() if self.warm else {},
            )
            with contextlib.suppress(Exception):
                await self.bus.nc.publish(self.subjects.runner(self.id), encode(beat))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.settings.heartbeat_s):
                    await self._stopping.wait()

    async def _on_heartbeat(self, msg: Msg) -> None:
        try:
            beat = decode_heartbeat(msg.data)
        except Exception:
            return
        self._peers[beat.runner_id] = time.monotonic()
        self._peer_tasks[beat.runner_id] = set(beat.running)

    def peer_runs(self, runner_id: str | None, task_id: str) -> bool:
        """Does ``runner_id`` (None: any other runner) heartbeat, and does its latest heartbeat
        list ``task_id``?"""
        live = self.live_runners() - {self.id} if runner_id is None else self.live_runners() & {runner_id}
        return any(task_id in self._peer_tasks.get(rid, set()) for rid in live)

    def peers_heard(self) -> bool:
        """Has every live peer's heartbeat arrived since this runner's NATS connection last came
        back? Until then their lists of running tasks are from before the outage (a task started
        just before it is missing from them)."""
        up = self.bus.reconnected_at if self.bus is not None else None
        if up is None:
            return True
        return all(self._peers.get(rid, 0.0) >= up for rid in self.live_runners() - {self.id})

    def live_runners(self) -> set[str]:
        """Runners heard within three heartbeats; time this runner's own NATS connection was
        down does not count (after a NATS restart, a peer is not dead for having been unheard)."""
        now = time.monotonic()
        window = 3 * self.settings.heartbeat_s
        offline = self.bus.offline_between if self.bus is not None else lambda _start, _end: 0.0
        return {rid for rid, seen in self._peers.items() if now - seen - offline(seen, now) <= window} | {self.id}

    async def _reap(self, *, startup: bool = False) -> None:
        assert self.backend is not None
        try:
            if startup:  # peers unknown yet: only our own previous life
                owners = {info.runner_id for info in await self.backend.list()}
                live = owners | {self.id}
            else:
                live = self.live_runners()
            removed = await self.backend.reap(live, self.id)
            if removed:
                logger.info("runner %s reaped %d orphaned sandbox(es)", self.id, removed)
        except Exception as exc:
            logger.warning("runner %s: reaping failed: %s", self.id, exc)

    async def _reap_loop(self) -> None:
        # wait long enough to have heard every live peer's heartbeat before judging
        warmup = max(3 * self.settings.heartbeat_s, 1.0)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(warmup):
                await self._stopping.wait()
        while not self._stopping.is_set():
            await self._reap()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(REAP_EVERY_S):
                    await self._stopping.wait()


def _remove_run_root(folder: Path) -> None:
    """Unmount the workspace mounts a killed runner left, then remove the folder."""

    unmount_under(folder)
    shutil.rmtree(folder, ignore_errors=True)


def run_root(settings: Settings, runner_id: str) -> Path:
    return settings.data_path / "runs" / runner_id
