"""One task's event stream: gapless ``seq`` from 1, JetStream-acked, exactly one ``finished``.

The server publishes ``accepted`` as seq 1; a runner continues from the last event on the
task's subject, so a redelivered job (after a runner died) keeps the sequence gapless.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable
from typing import Any

from nats.js.api import DeliverPolicy

from bus import (
    Bus,
    DuplicateMessage,
    Event,
    Finished,
    MessageDecodeError,
    ModelCall,
    Started,
    TaskError,
    Usage,
    decode_event,
    utcnow,
)

logger = logging.getLogger(__name__)


class TaskPreempted(TaskError):
    """The task's next event was written by another process (it was cancelled or finished
    elsewhere); this runner must stop working on it."""

    code = "task_preempted"

    def __init__(self, task_id: str) -> None:
        super().__init__(f"task {task_id} was finished by another process; stopping", task_id=task_id)


async def last_event(bus: Bus, task_id: str) -> Event | None:
    """The newest event stored for ``task_id`` (None when there is none or it is unreadable)."""
    found = await bus.last_event(task_id)
    if found is not None and found[1] is None:
        logger.warning("last event of task %s does not decode; treating the task as started", task_id)
    return None if found is None else found[1]


async def task_history(bus: Bus, task_id: str, upto_seq: int, *, timeout: float = 10.0) -> tuple[float, Usage, str | None]:
    """Metered cost and usage so far, and the runner named in the ``started`` event."""

    cost, usage, owner = 0.0, Usage(), None
    sub = await bus.js.subscribe(bus.subjects.events(task_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        async with asyncio.timeout(timeout):
            while True:
                msg = await sub.next_msg(timeout=timeout)
                try:
                    event = decode_event(msg.data)
                except MessageDecodeError:
                    continue
                if isinstance(event, ModelCall):
                    cost, usage = cost + event.cost_usd, usage + event.usage
                elif isinstance(event, Started):
                    owner = event.runner_id
                if event.seq >= upto_seq:
                    return round(cost, 9), usage, owner
    finally:
        await sub.unsubscribe()


async def emit_model_call(events: TaskEvents, record: Any) -> None:
    """One metered model call (a gateway ``CallRecord``) as a ``model_call`` event."""
    await events.emit(
        ModelCall,
        model=record.model,
        usage=record.usage,
        cost_usd=record.cost_usd,
        total_cost_usd=record.total_cost_usd,
        duration_ms=record.duration_ms,
        status=record.status,
        stop_reason=record.stop_reason,
    )


class TaskEvents:
    """Publishes the events of one task. Safe to call from concurrent coroutines."""

    def __init__(self, bus: Bus, task_id: str, *, next_seq: int = 1) -> None:
        self.bus = bus
        self.task_id = task_id
        self.subject = bus.subjects.events(task_id)
        self._next = next_seq
        self._lock = asyncio.Lock()
        self.finished: Finished | None = None
        self.preempted = False
        """Another process wrote this task's next event (it cancelled the task): nothing more is published."""
        self.count = 0
        self.on_event: Callable[[Event], None] | None = None  # e.g. the runner's metrics

    @classmethod
    async def resume(cls, bus: Bus, task_id: str) -> tuple[TaskEvents, Event | None]:
        found = await bus.last_event(task_id)
        if found is None:
            return cls(bus, task_id), None
        stream_seq, last = found
        if last is None:  # unreadable: we must not reuse its seq (the fallback keeps us past whatever is there)
            logger.warning("last event of task %s does not decode; treating the task as started", task_id)
            return cls(bus, task_id, next_seq=stream_seq + 1), None
        events = cls(bus, task_id, next_seq=last.seq + 1)
        if isinstance(last, Finished):
            events.finished = last
        return events, last

    @property
    def next_seq(self) -> int:
        return self._next

    async def emit(self, event_type: type[Any], **fields: Any) -> Any:
        """Publish one event with the next seq; returns it. Nothing after ``finished``."""
        async with self._lock:
            if self.finished is not None or self.preempted:
                logger.debug("task %s: dropping %s after finished", self.task_id, event_type.__name__)
                return None
            event = event_type(task_id=self.task_id, seq=self._next, ts=utcnow(), **fields)
            try:
                await self.bus.publish_unique(
                    self.subject, event, msg_id=f"{self.task_id}-{self._next}", stream=self.bus.subjects.events_stream
                )
            except DuplicateMessage:
                # someone else (the server cancelling a task not yet started) took this seq
                last = await last_event(self.bus, self.task_id)
                self.preempted = True
                if isinstance(last, Finished):
                    self.finished = last
                raise TaskPreempted(self.task_id) from None
            self._next += 1
            self.count += 1
            if isinstance(event, Finished):
                self.finished = event
            if self.on_event is not None:
                self.on_event(event)
            return event

    async def finish(self, status: str, **fields: Any) -> Finished | None:
        """Publish the one terminal event (idempotent: a second call returns the first);
        None when another process wrote this task's end first (it was cancelled before it ran)."""
        if self.finished is not None:
            return self.finished
        event = await self.emit(Finished, status=status, **fields)
        return event if isinstance(event, Finished) else self.finished  # None: another process ended it


MAX_EVENT_TEXT = 65_536


class EventBudget:
    """Bounds what a task's agent output turns into: at most ``max_events`` events and
    ``max_bytes`` bytes of text (each string or tool input cut to ``MAX_EVENT_TEXT``).
    Everything in that output may be forged from inside the sandbox, so this is what
    keeps a flood from reaching the bus, the audit log and the server's memory."""

    def __init__(self, max_events: int, max_bytes: int) -> None:
        self.max_events = max_events
        self.max_bytes = max_bytes
        self.events = 0
        self.bytes = 0
        self.dropped = 0

    @property
    def exhausted(self) -> bool:
        return self.dropped > 0

    def admit(self, fields: dict[str, Any]) -> dict[str, Any] | None:
        """The fields to publish (cut to size), or None when the budget is spent."""
        if self.dropped:
            self.dropped += 1
            return None
        clipped, size = clip_fields(fields)
        if self.events + 1 > self.max_events or self.bytes + size > self.max_bytes:
            self.dropped = 1
            return None
        self.events += 1
        self.bytes += size
        return clipped

    def notice(self) -> str:
        return (
            f"the agent's output passed this task's limit of {self.max_events} events or "
            f"{self.max_bytes} bytes; further output is dropped (the task keeps running "
            "under its time and cost limits)"
        )


def clip_fields(fields: dict[str, Any]) -> tuple[dict[str, Any], int]:
    out: dict[str, Any] = {}
    size = 0
    for name, given in fields.items():
        value = given
        if isinstance(value, str):
            if len(value) > MAX_EVENT_TEXT:
                value = value[:MAX_EVENT_TEXT] + f"... [{len(value) - MAX_EVENT_TEXT} more characters cut]"
            size += len(value)
        elif isinstance(value, dict):
            text = json.dumps(value, default=str)
            if len(text) > MAX_EVENT_TEXT:
                value = {"truncated": text[:MAX_EVENT_TEXT]}
                text = value["truncated"]
            size += len(text)
        out[name] = value
    return out, size
