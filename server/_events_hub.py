"""One subscription per server for the events of every task it follows.

``EventsHub`` holds ONE JetStream ordered consumer on ``<prefix>.events.*`` (new
messages only, created when the server starts) and hands each message to the inbox of
the task it names (messages of tasks nobody here follows are dropped after reading the
subject). No consumer is created per task: a consumer costs several JetStream API round
trips to create and counts against the stream's consumer limit, which a burst of
admissions used to hit.

A JetStream consumer, not a core subscription: a core subscriber also receives what the
stream refused, such as the server's own preempting ``finished`` of a cancel that lost
its race with the runner's first event (``Nats-Expected-Last-Subject-Sequence``); only
stored events may settle a task. The ordered consumer recreates itself after a gap.

Still, ``follow`` reads the stream (``replay_events``) whenever it may have missed
something:

- at the start, unless the inbox was opened before the task's first event was published
  (a task this server submits: ``fresh``);
- when an event's ``seq`` skips one (a message dropped: slow consumer, inbox overflow);
- after the connection reconnected (checked every ``RECONNECT_CHECK_S``), or after the
  hub's consumer went deaf (a probe found the events stream past what the hub had received,
  and by the next probe ``PROBE_S`` later the hub had received nothing at all: its
  server-side consumer went with a cluster node, which nats-py notices only after two
  missed 5 s heartbeats);
- when the task has been quiet for a while (``QUIET_CHECK_S``, doubling to
  ``QUIET_CHECK_MAX_S``): one direct get of the subject's last message, a replay only if
  it is newer than what the watch holds.

Events already in the watch are skipped, so a replay and the live messages may overlap.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from bus import Backoff, Bus, Event, Finished

from ._dispatch_events import TaskWatch, decode_task_event, replay_events

logger = logging.getLogger(__name__)

INBOX_LIMIT = 10_000
"""Undelivered events held per followed task; beyond it a message is dropped and the
follower reads the stream instead (the gap shows in ``seq``)."""
QUIET_CHECK_S = 10.0
QUIET_CHECK_MAX_S = 60.0
"""A followed task quiet this long gets one direct get of its last stored event (a safety
net: a lost live message shows as a gap or follows a reconnect, both caught sooner). Not
shorter: a burst of queued tasks would each poll the stream while they wait."""
RECONNECT_CHECK_S = 0.5
PROBE_S = 5.0
"""How often the hub compares the events stream's last sequence with what it received."""
PROBE_TIMEOUT_S = 2.0
REPLAY_TIMEOUT_S = 10.0


class Inbox:
    """The undelivered events of one followed task (raw payloads, newest last)."""

    def __init__(self, task_id: str) -> None:
        self.task_id = task_id
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(maxsize=INBOX_LIMIT)
        self.dropped = 0
        self.catch_up = asyncio.Event()
        """Set by the hub after a reconnect: the follower reads the stream."""

    def put(self, data: bytes) -> None:
        try:
            self.queue.put_nowait(data)
        except asyncio.QueueFull:
            self.dropped += 1  # the follower sees the gap in seq and replays from the stream


class EventsHub:
    """``async with EventsHub(bus):`` one wildcard subscription, demultiplexed by task id."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._inboxes: dict[str, Inbox] = {}
        self._sub: Any = None
        self._prefix_len = len(bus.subjects.events("x")) - 1
        self._reconnects = 0
        self._received = 0
        """Messages delivered so far (a deaf subscription delivers none)."""
        self._last_msg: Any = None
        self._floor = 0
        """The events stream's last sequence when the hub last subscribed (new messages only)."""
        self._watcher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> EventsHub:
        self._reconnects = self.bus.reconnects
        self._sub = await self._subscribe()
        self._watcher = asyncio.create_task(self._watch(), name="events-hub-watch")
        return self

    async def _subscribe(self) -> Any:
        self._floor = await self._stream_last_seq()  # before: what the new consumer will not deliver
        sub = await self.bus.js.subscribe(
            self.bus.subjects.events_all(),
            stream=self.bus.subjects.events_stream,
            cb=self._on_msg,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.NEW,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        await self.bus.nc.flush(timeout=10)
        return sub

    async def __aexit__(self, *exc: object) -> None:
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await asyncio.shield(sub.unsubscribe())
            except Exception as exc:  # the connection may be closing already
                logger.debug("events hub unsubscribe failed: %s", exc)

    @property
    def following(self) -> int:
        return len(self._inboxes)

    def open(self, task_id: str) -> Inbox:
        """The inbox of ``task_id``: from now on its live events land there."""
        inbox = self._inboxes.get(task_id)
        if inbox is None:
            inbox = self._inboxes[task_id] = Inbox(task_id)
        return inbox

    def close(self, inbox: Inbox) -> None:
        if self._inboxes.get(inbox.task_id) is inbox:
            del self._inboxes[inbox.task_id]

    async def _on_msg(self, msg: Any) -> None:
        self._received += 1
        self._last_msg = msg
        inbox = self._inboxes.get(msg.subject[self._prefix_len :])
        if inbox is not None:
            inbox.put(msg.data)

    async def _watch(self) -> None:
        """After a reconnect (the ordered consumer may have died with the old connection's
        server: a NATS restart left new tasks unheard for ~19 s, each waiting for its quiet
        check) or when the subscription went deaf: subscribe again, then every follower reads
        the stream for what was published meanwhile."""
        backoff = Backoff(0.5, 10.0)
        loop = asyncio.get_running_loop()
        probe_at = loop.time() + PROBE_S
        behind: tuple[int, int] | None = None  # (stream last seq, messages received) when last found behind
        while True:
            await asyncio.sleep(RECONNECT_CHECK_S)
            count = self.bus.reconnects
            why = "reconnected" if count != self._reconnects else ""
            if not why and loop.time() >= probe_at:
                probe_at = loop.time() + PROBE_S
                seen = self._seen()
                if behind is not None and seen < behind[0] and self._received == behind[1]:
                    why = f"the events stream reached seq {behind[0]} and nothing reached the hub for {PROBE_S:g}s"
                else:
                    last = await self._stream_last_seq()
                    behind = (last, self._received) if last > seen else None
            if not why:
                continue
            try:
                new = await self._subscribe()
            except Exception as exc:  # NATS away again: the next check retries
                delay = backoff.next_delay()
                logger.warning("events hub: subscribing again (%s) failed (%s); retrying in %.1fs", why, exc, delay)
                await asyncio.sleep(delay)
                continue
            backoff.reset()
            old, self._sub = self._sub, new
            self._reconnects = count
            behind = None
            if old is not None:
                with contextlib.suppress(Exception):  # its consumer may be gone with the old server
                    await old.unsubscribe()
            logger.info("events hub: %s; subscribed again, %d followed task(s) catch up from the stream", why, len(self._inboxes))
            for inbox in list(self._inboxes.values()):
                inbox.catch_up.set()

    def _seen(self) -> int:
        """The highest stream sequence the hub has received, or the floor it subscribed at."""
        seen = self._floor
        if self._last_msg is not None:
            with contextlib.suppress(Exception):  # a message without JetStream metadata: no verdict
                seen = max(seen, int(self._last_msg.metadata.sequence.stream))
        return seen

    async def _stream_last_seq(self) -> int:
        """The events stream's last sequence; 0 when it does not answer now (no verdict)."""
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                info = await self.bus.js.stream_info(self.bus.subjects.events_stream)
        except Exception as exc:  # the next probe asks again
            logger.debug("events hub probe: %s", exc)
            return 0
        return int(info.state.last_seq)


async def follow(
    hub: EventsHub,
    inbox: Inbox,
    watch: TaskWatch,
    *,
    fresh: bool,
    max_bytes: int = 8 * 1024 * 1024,
    on_event: Callable[[Event], Awaitable[None]] | None = None,
    on_finished: Callable[[Finished], Awaitable[None]] | None = None,
) -> Finished:
    """Fill ``watch`` from ``inbox`` (and the stream where the inbox may have missed
    events) until ``finished``. ``on_finished`` runs before the ``finished`` event reaches
    the watch, so a caller waiting on the watch sees the task's budget settled and its
    record final (when it fails, the event is shown anyway and the error raised).
    ``fresh``: the inbox was opened before the task's first event was published."""
    task_id = watch.task_id
    quiet_s = QUIET_CHECK_S

    async def handle(event: Event) -> bool:
        if isinstance(event, Finished) and on_finished is not None and watch.finished is None and event.seq > watch.last_seq:
            try:
                await on_finished(event)
            except BaseException:
                watch.add(event)
                raise
        if watch.add(event) and on_event is not None:
            await on_event(event)
        return watch.finished is not None

    async def replay(why: str) -> bool:
        logger.debug("task %s: reading the stream after seq %d (%s)", task_id, watch.last_seq, why)
        for event in await replay_events(hub.bus, task_id, timeout=REPLAY_TIMEOUT_S, max_bytes=max_bytes, after_seq=watch.last_seq):
            if await handle(event):
                return True
        return False

    if watch.finished is not None:  # a retry after on_finished failed: the caller settles again
        return watch.finished
    if not fresh and await replay("start"):
        return _done(watch)
    while True:
        if inbox.catch_up.is_set():
            inbox.catch_up.clear()
            if await replay("reconnect"):
                return _done(watch)
        try:
            async with asyncio.timeout(quiet_s):
                data = await _next(inbox)
        except TimeoutError:
            quiet_s = min(quiet_s * 2, QUIET_CHECK_MAX_S)
            if await _newer_stored(hub.bus, task_id, watch.last_seq) and await replay("quiet"):
                return _done(watch)
            continue
        if data is None:
            continue  # catch_up was set
        quiet_s = QUIET_CHECK_S
        event = decode_task_event(task_id, data, max_bytes)
        if event is None:
            continue
        if event.seq > watch.last_seq + 1 and await replay(f"gap before {event.seq}"):  # a gap: some were dropped
            return _done(watch)
        if await handle(event):
            return _done(watch)


def _done(watch: TaskWatch) -> Finished:
    assert watch.finished is not None
    return watch.finished


async def _next(inbox: Inbox) -> bytes | None:
    """The next payload, or None as soon as a catch-up is requested."""
    if not inbox.queue.empty():
        return inbox.queue.get_nowait()
    getter = asyncio.ensure_future(inbox.queue.get())
    flag = asyncio.ensure_future(inbox.catch_up.wait())
    try:
        await asyncio.wait({getter, flag}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        flag.cancel()
        if not getter.done():
            getter.cancel()
    if getter.done() and not getter.cancelled():
        return getter.result()
    return None


async def _newer_stored(bus: Bus, task_id: str, last_seq: int) -> bool:
    """Whether the stream holds an event of ``task_id`` after ``last_seq`` (one direct get)."""
    try:
        last = await bus.js.get_last_msg(bus.subjects.events_stream, bus.subjects.events(task_id))
    except NotFoundError:
        return False
    except Exception as exc:  # NATS down: the next check retries
        logger.debug("task %s: reading its last event failed: %s", task_id, exc)
        return False
    event = decode_task_event(task_id, last.data or b"", 1 << 62)
    return event is not None and event.seq > last_seq
