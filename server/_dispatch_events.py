"""Following a task's events: one ordered JetStream consumer per task, fanned out in-process.

``TaskWatch`` holds the newest events of one task (a bounded window, with counts) and
wakes any number of readers. ``follow_events`` fills a watch from ``<prefix>.events.<task_id>`` starting at
the first stored message (DeliverPolicy.ALL), so nothing is missed even if the task
finished before the follower started; it stops at the ``finished`` event.
``replay_events`` reads what is stored right now without waiting for more.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from bus import (
    Artifact,
    Bus,
    Event,
    Finished,
    MessageDecodeError,
    ModelCall,
    Started,
    decode_event,
)

logger = logging.getLogger(__name__)

EVENT_WINDOW = 2_000
"""Newest events of one task kept in the server's memory."""
MAX_ARTIFACTS = 10_000


class TaskWatch:
    """The latest events of one task (a bounded window), counts and artifacts, with a
    wake-up for readers.

    A task's events are written by its runner from what an agent printed, so their number
    is bounded only by the runner's per-task limit: the server keeps the newest ``window``
    events, the count of all, whether the task started, its artifacts (at most
    ``MAX_ARTIFACTS``) and its ``finished`` event. The full log stays in JetStream."""

    def __init__(self, task_id: str, *, window: int | None = EVENT_WINDOW) -> None:
        self.task_id = task_id
        self._window: collections.deque[Event] = collections.deque(maxlen=window)
        self.count = 0
        self.last_seq = 0
        self.started = False
        self._artifacts: list[Artifact] = []
        self.finished: Finished | None = None
        self.cost_so_far = 0.0
        self._changed = asyncio.Event()

    @property
    def events(self) -> list[Event]:
        """The newest events (all of them while there are at most ``window``)."""
        return list(self._window)

    def add(self, event: Event) -> bool:
        """Append ``event`` if it is the next one; duplicates and stragglers are dropped."""
        expected = self.last_seq + 1
        if event.seq < expected or self.finished is not None:
            return False
        if event.seq > expected:
            logger.warning("task %s: events %d..%d missing; continuing", self.task_id, expected, event.seq - 1)
        self._window.append(event)
        self.count += 1
        self.last_seq = event.seq
        if isinstance(event, ModelCall):
            self.cost_so_far = max(self.cost_so_far, event.total_cost_usd)
        elif isinstance(event, Started):
            self.started = True
        elif isinstance(event, Artifact) and len(self._artifacts) < MAX_ARTIFACTS:
            self._artifacts.append(event)
        elif isinstance(event, Finished):
            self.finished = event
            self.cost_so_far = event.cost_usd
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        return True

    @property
    def artifacts(self) -> list[Artifact]:
        return list(self._artifacts)

    async def stream(self, *, start: int = 0, keepalive_s: float | None = None) -> AsyncIterator[Event | None]:
        """Yield events from position ``start`` until ``finished``; ``None`` after each quiet
        ``keepalive_s``. A reader that fell behind the window skips to its oldest event."""
        index = start
        while True:
            while index < self.count:
                base = self.count - len(self._window)
                index = max(index, base)
                event = self._window[index - base]
                index += 1
                yield event
            if self.finished is not None:
                return
            changed = self._changed
            if keepalive_s is None:
                await changed.wait()
                continue
            try:
                async with asyncio.timeout(keepalive_s):
                    await changed.wait()
            except TimeoutError:
                yield None

    async def wait_finished(self, *, timeout: float | None = None) -> Finished:
        async with asyncio.timeout(timeout):
            while self.finished is None:
                await self._changed.wait()
        return self.finished


def _raise_if_cancelling() -> None:
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


def decode_task_event(task_id: str, data: bytes, max_bytes: int) -> Event | None:
    try:
        event = decode_event(data, max_bytes=max_bytes)
    except MessageDecodeError as exc:
        logger.warning("task %s: undecodable event skipped: %s", task_id, exc.message)
        return None
    if event.task_id != task_id:
        logger.warning("task %s: event for %s on its subject skipped", task_id, event.task_id)
        return None
    return event


async def follow_events(
    bus: Bus,
    watch: TaskWatch,
    *,
    max_bytes: int = 8 * 1024 * 1024,
    on_event: Callable[[Event], Awaitable[None]] | None = None,
    on_finished: Callable[[Finished], Awaitable[None]] | None = None,
) -> Finished:
    """Fill ``watch`` from the task's stored and future events until ``finished``.

    ``on_finished`` runs before the ``finished`` event reaches the watch, so a caller
    waiting on the watch sees the task's budget settled and its record final (when it
    fails, the event is shown anyway and the error raised)."""
    subject = bus.subjects.events(watch.task_id)
    sub = await bus.js.subscribe(
        subject,
        stream=bus.subjects.events_stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        # unsubscribe does not delete the ephemeral consumer; the server does once nobody has
        # listened for this long. 300 s let ~500 finished tasks' consumers pile up under load
        # until JetStream refused new ones (err 10026) and new tasks were never followed;
        # 10 s still did at ~100 admissions/s (17,000 refused follows in a 20,000-task soak).
        inactive_threshold=2.0,
    )
    try:
        _raise_if_cancelling()  # nats-py can swallow a cancel that lands inside subscribe()
        async for msg in sub.messages:
            event = decode_task_event(watch.task_id, msg.data, max_bytes)
            if isinstance(event, Finished) and on_finished is not None and watch.finished is None and event.seq > watch.last_seq:
                try:
                    await on_finished(event)
                except BaseException:
                    watch.add(event)
                    raise
            if event is not None and watch.add(event) and on_event is not None:
                await on_event(event)
            if watch.finished is not None:
                return watch.finished
    finally:
        try:
            await asyncio.shield(sub.unsubscribe())
        except Exception as exc:  # connection already closing
            logger.debug("unsubscribe of %s failed: %s", subject, exc)
    raise asyncio.CancelledError  # the subscription ended without a finished event: connection closed


async def replay_events(
    bus: Bus, task_id: str, *, timeout: float = 5.0, max_bytes: int = 8 * 1024 * 1024, after_seq: int = 0
) -> list[Event]:
    """Every event of ``task_id`` stored now with a ``seq`` above ``after_seq``, in order
    (empty if none). One direct get when nothing is newer; an ordered consumer otherwise."""
    subject = bus.subjects.events(task_id)
    try:
        last = await bus.js.get_last_msg(bus.subjects.events_stream, subject)
    except NotFoundError:
        return []
    newest = decode_task_event(task_id, last.data or b"", max_bytes)
    if after_seq and newest is not None and newest.seq <= after_seq:
        return []
    watch = TaskWatch(task_id, window=None)  # all stored events (as many as the runner let through)
    sub = await bus.js.subscribe(
        subject,
        stream=bus.subjects.events_stream,
        ordered_consumer=True,
        deliver_policy=DeliverPolicy.ALL,
        inactive_threshold=2.0,
    )
    try:
        async with asyncio.timeout(timeout):
            while True:
                msg = await sub.next_msg(timeout=timeout)
                event = decode_task_event(task_id, msg.data, max_bytes)
                if event is not None:
                    watch.add(event)
                if msg.metadata.sequence.stream >= (last.seq or 0):
                    break
    finally:
        await asyncio.shield(sub.unsubscribe())
    return [e for e in watch.events if e.seq > after_seq]
