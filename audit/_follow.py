"""Live tail: rows built from the bus as events and notices are published.

Without ``task`` it is a core subscription on every events and audit subject (what
happens from now on). With ``task`` it is an ordered consumer on that task's subject
from its first event, so a task already running is shown from the start and then live.
Rows are redacted exactly as the writer would store them; they carry no ``id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import msgspec
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DeliverPolicy

from bus import Bus, BusError, TaskbusError

from ._query import iso
from ._rows import EVENTS, NOTICES, prepare

logger = logging.getLogger(__name__)


class LiveFilter:
    """--task / --key / --type applied to live rows (keys learnt from ``accepted`` events)."""

    def __init__(
        self,
        *,
        task: str | None = None,
        key: str | None = None,
        types: Sequence[str] = (),
        known_keys: dict[str, str] | None = None,
    ) -> None:
        self.task, self.key, self.types = task, key, frozenset(types)
        self.keys: dict[str, str] = dict(known_keys or {})

    def __call__(self, row: dict[str, Any]) -> bool:
        task_id = row.get("task_id")
        if row["type"] == "accepted" and task_id and row.get("key_id"):
            self.keys[task_id] = row["key_id"]
        if not row.get("key_id") and task_id in self.keys:
            row["key_id"] = self.keys[task_id]
        if self.task and task_id != self.task:
            return False
        if self.key and row.get("key_id") != self.key:
            return False
        return not (self.types and row["type"] not in self.types and row.get("kind") not in self.types)


def live_row(stream: str, subject: str, data: bytes) -> dict[str, Any]:
    p = prepare(stream, subject, data)
    try:
        event: Any = msgspec.json.decode(p.body)
    except msgspec.DecodeError:
        event = p.body
    return {
        "id": None,
        "ts": iso(p.ts_us),
        "stream": stream,
        "task_id": p.task_id,
        "seq": p.seq,
        "type": p.type,
        "kind": p.kind,
        "key_id": p.key_id,
        "subject": subject,
        "event": event,
    }


async def follow(
    bus: Bus,
    *,
    accept: LiveFilter,
    subscribed: asyncio.Event | None = None,
    queue_size: int = 10_000,
) -> AsyncIterator[dict[str, Any]]:
    """Yield matching rows as they are published, until the caller stops iterating."""
    queue: asyncio.Queue[tuple[str, str, bytes]] = asyncio.Queue(maxsize=queue_size)
    dropped = 0

    def make_cb(stream: str) -> Callable[[Msg], Awaitable[None]]:
        async def cb(msg: Msg) -> None:
            nonlocal dropped
            try:
                queue.put_nowait((stream, msg.subject, msg.data))
            except asyncio.QueueFull:
                dropped += 1

        return cb

    subs: list[Subscription] = []
    try:
        try:
            if accept.task:
                subs.append(
                    await bus.js.subscribe(
                        bus.subjects.events(accept.task),
                        ordered_consumer=True,
                        deliver_policy=DeliverPolicy.ALL,
                        cb=make_cb(EVENTS),
                    )
                )
            else:
                subs.append(await bus.nc.subscribe(bus.subjects.events_all(), cb=make_cb(EVENTS)))
            subs.append(await bus.nc.subscribe(bus.subjects.audit_all(), cb=make_cb(NOTICES)))
            await bus.nc.flush(timeout=5)
        except TaskbusError:
            raise
        except Exception as exc:  # no such stream, no permission, timeout
            raise BusError(
                f"cannot follow {bus.subjects.prefix} events: {exc or type(exc).__name__}. "
                "Has anything started on this prefix (`taskbus audit run` creates the streams)?"
            ) from None
        if subscribed is not None:
            subscribed.set()
        while True:
            stream, subject, data = await queue.get()
            if dropped:
                logger.warning("tail fell behind; %d messages not shown", dropped)
                dropped = 0
            row = live_row(stream, subject, data)
            if accept(row):
                yield row
    finally:
        for sub in subs:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(sub.unsubscribe(), 2.0)
