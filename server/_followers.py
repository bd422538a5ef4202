"""The tasks one server follows, and their settlement.

Each followed task has a ``TaskWatch`` (what callers read and wait on) filled by one
follower task from the server's ``EventsHub`` until ``finished``. The follower settles the
task (the budget reservation and the task's record, and a completion's answer into the
cache) before ``finished`` reaches the watch, so a caller that sees the result can make
its next call at once without tripping its own concurrency limit. A follower that fails
(NATS away, the control plane busy) retries with jittered backoff, reading the stream
again; one left over when the server stops resumes at the next start (``resume``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from bus import Backoff, Bus, Event, Finished, Settings
from profiles import Store, TaskRecord

from ._dispatch_cache import CachedCompletion, CompletionCache
from ._dispatch_events import TaskWatch, replay_events
from ._events_hub import EventsHub, Inbox, follow

logger = logging.getLogger(__name__)

FINAL = frozenset({"succeeded", "failed", "timeout", "cancelled", "budget_exceeded", "denied"})
MAX_CACHED_WATCHES = 1024
"""Finished tasks' watches kept for late waiters (~3 KB each; an older one is replayed from
the events stream): 4,096 held ~12 MB of a soak's memory growth."""
SETTLING_WAIT_S = 5.0
"""How long a reader of a task whose record is final waits for its follower's `finished`."""


class Followers:
    """``async with Followers(...)``: follow tasks until they finish, and settle them."""

    def __init__(
        self,
        settings: Settings,
        bus: Bus,
        store: Store,
        cache: CompletionCache,
        *,
        on_event: Callable[[Event], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.bus = bus
        self.store = store
        self.cache = cache
        self.on_event = on_event
        """Called with every event a follower hands to its watch (before ``finished``'s settlement)."""
        self.watches: dict[str, TaskWatch] = {}
        self._running: dict[str, asyncio.Task[None]] = {}
        self._cache_keys: dict[str, tuple[str, str]] = {}
        self._hub = EventsHub(bus)
        self._tg: asyncio.TaskGroup | None = None

    async def __aenter__(self) -> Followers:
        await self._hub.__aenter__()
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        await self.resume()
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Followers stop here and resume on the next start. Cancel until they are gone:
        # a cancel landing inside a nats-py call can be swallowed.
        for _ in range(20):
            pending = [t for t in self._running.values() if not t.done()]
            if not pending:
                break
            for task in pending:
                task.cancel()
            await asyncio.wait(pending, timeout=0.5)
        tg, self._tg = self._tg, None
        if tg is not None:
            await tg.__aexit__(None, None, None)
        await self._hub.__aexit__(None, None, None)

    async def resume(self) -> None:
        """Follow every task the registry says is still live (after a restart)."""
        rows: list[TaskRecord] = []
        for status in ("accepted", "running"):
            rows.extend(await self.store.list_tasks(None, status=status, limit=100_000))
        for row in rows:
            self.follow(row.task_id)
        if rows:
            logger.info("resumed following %d unfinished tasks", len(rows))

    def follow(self, task_id: str, *, fresh: bool = False) -> TaskWatch:
        """The watch of ``task_id``, with a follower filling it until ``finished`` (``fresh``:
        none of the task's events is published yet, so the follower need not read the stream)."""
        watch = self.watches.get(task_id)
        if watch is None:
            watch = self.watches[task_id] = TaskWatch(task_id)
        if task_id not in self._running and watch.finished is None and self._tg is not None:
            inbox = self._hub.open(task_id)  # now, not when the task starts: no event slips past
            self._running[task_id] = self._tg.create_task(self._run(watch, inbox, fresh=fresh), name=f"follow-{task_id}")
        return watch

    def following(self, task_id: str) -> bool:
        return task_id in self._running

    def cache_answer(self, task_id: str, key: str, routing_reason: str) -> None:
        """When ``task_id`` succeeds, its answer goes into the completion cache under ``key``."""
        self._cache_keys[task_id] = (key, routing_reason)

    def drop(self, task_id: str) -> None:
        """Stop following ``task_id`` (its admission is being undone) and cache nothing for it."""
        running = self._running.pop(task_id, None)
        if running is not None:
            running.cancel()
        self._cache_keys.pop(task_id, None)

    async def cache_written(self, task_id: str, *, timeout: float = 5.0) -> None:
        """Wait (bounded) until a cacheable task's answer is in the cache, so the caller's
        next identical request hits it; returns at once for other tasks."""
        running = self._running.get(task_id)
        if task_id in self._cache_keys and running is not None:
            await asyncio.wait({running}, timeout=timeout)

    async def watch(self, task_id: str, *, final: bool) -> TaskWatch:
        """The watch of ``task_id``, replayed from the stream when this server has none
        (``final``: the registry says the task has ended)."""
        watch = self.watches.get(task_id)
        if watch is not None:
            if final and watch.finished is None and task_id in self._running:
                # settlement writes the record just before the follower hands `finished` to
                # the watch: wait that moment rather than answer "final, without a result"
                with contextlib.suppress(TimeoutError):
                    await watch.wait_finished(timeout=SETTLING_WAIT_S)
            return watch
        watch = TaskWatch(task_id)
        for event in await replay_events(self.bus, task_id):
            watch.add(event)
        if watch.finished is None and not final:
            self.watches.setdefault(task_id, watch)  # the follower goes on from what was replayed
            return self.follow(task_id)
        # finished (or its events aged out of the stream: the registry row is what is left)
        if len(self.watches) < MAX_CACHED_WATCHES:
            self.watches.setdefault(task_id, watch)
        return watch

    async def _run(self, watch: TaskWatch, inbox: Inbox, *, fresh: bool) -> None:
        """Follow until ``finished`` is seen and settled; a failure (NATS gone, Store busy)
        is retried with backoff, reading the stream again (events already seen are
        skipped), so a waiting caller is never left hanging."""
        backoff = Backoff(0.5, 10.0)  # jittered: after a NATS outage every follower retries at once
        settled = False

        async def settle(finished: Finished) -> None:
            nonlocal settled
            await self._settle(finished)
            settled = True

        try:
            while True:
                try:
                    finished = await follow(
                        self._hub,
                        inbox,
                        watch,
                        fresh=fresh,
                        max_bytes=8 * self.settings.max_message_bytes,
                        on_event=self.on_event,
                        on_finished=settle,
                    )
                    if not settled:  # a retry found the task finished already
                        await settle(finished)
                    return
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    fresh = False
                    delay = backoff.next_delay()
                    logger.warning("following task %s failed (%s); retrying in %.1fs", watch.task_id, exc, delay)
                    await asyncio.sleep(delay)
        finally:
            self._hub.close(inbox)
            self._running.pop(watch.task_id, None)
            # keep finished watches briefly for waiters; drop the oldest beyond a bound
            if len(self.watches) > MAX_CACHED_WATCHES:
                for task_id in [t for t, w in self.watches.items() if w.finished is not None][:256]:
                    del self.watches[task_id]

    async def _settle(self, finished: Finished) -> None:
        cached = self._cache_keys.pop(finished.task_id, None)
        if cached is not None and finished.status == "succeeded":
            await self.cache.put(
                cached[0],
                CachedCompletion(
                    text=finished.result,
                    model=finished.model or "",
                    routing_reason=cached[1],
                    usage=finished.usage,
                    cost_usd=finished.cost_usd,
                    task_id=finished.task_id,
                ),
            )
        await self.store.finish_task(
            finished.task_id,
            finished.cost_usd,
            finished.status,
            model=finished.model,
            result_summary=finished.result[:500] or None,
            error_code=finished.reason if finished.status != "succeeded" else None,
        )
        logger.info("task %s %s, cost $%.6f", finished.task_id, finished.status, finished.cost_usd)
