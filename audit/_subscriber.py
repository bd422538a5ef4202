"""The audit process: durable pull consumers on the events and audit streams feeding
the batching writer, acks after commit, chain head and alerts publishing.

The database is the cursor: at start the two durable consumers (``audit-events``,
``audit-notices``) are recreated to deliver from the stream sequence after the last
one stored, so a crash (even SIGKILL between commit and ack) loses nothing and stores
nothing twice, and the catch-up after downtime is in stream order. Consumers use
AckPolicy.ALL: one ack of the last message of a committed batch acks the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from nats.aio.msg import Msg
from nats.errors import ConnectionReconnectingError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError

from bus import LEADERLESS, UNANSWERED, Backoff, Bus, ChainHead, Settings, encode, first_error

from ._alerts import Alerter, AlertRules
from ._db import WriterLock, default_db_path, open_db
from ._errors import AuditError
from ._pull import BatchPull, stream_seq
from ._rows import EVENTS, NOTICES
from ._writer import BatchResult, Incoming, Writer, is_full, is_retryable

logger = logging.getLogger(__name__)
T = TypeVar("T")

NOT_YET = (*UNANSWERED, *LEADERLESS, ConnectionReconnectingError)
"""What JetStream says while it cannot answer yet; anything else (a refused permission, a bad
configuration) still stops the writer with its error."""

EVENTS_CONSUMER = "audit-events"
NOTICES_CONSUMER = "audit-notices"


def consumer_names(writer_name: str = "") -> tuple[str, str]:
    """The durable consumers (events, notices) of the audit writer called ``writer_name``
    (``Settings.audit_writer_name``): each named writer gets every message, so any number of
    writers may each keep a full copy of the log; writers sharing a name share the work."""
    if not writer_name:
        return EVENTS_CONSUMER, NOTICES_CONSUMER
    return f"{EVENTS_CONSUMER}-{writer_name}", f"{NOTICES_CONSUMER}-{writer_name}"


@dataclass(frozen=True, kw_only=True)
class AuditOptions:
    fetch_batch: int = 1000
    """Messages asked for per pull request."""
    fetch_wait_s: float = 1.0
    """How long a fetch lingers when nothing is waiting (also how fast stop is noticed)."""
    max_batch: int = 5000
    """Most messages written in one transaction (queued fetches are merged up to this)."""
    head_interval_s: float = 30.0
    """The chain head is published at least this often, and after a batch at most once a second."""
    log_interval_s: float = 5.0
    ack_wait_s: float = 60.0
    write_in_thread: bool = False
    """Write batches in a dedicated thread instead of inline on the event loop. Inline is
    faster (measured: ~30% more events/s; a thread hands the GIL back and forth on every
    row); a thread keeps the loop responsive when run_audit shares a process."""
    alert_timeout_s: float = 10.0
    """The alert command hook is killed after this long."""
    auth_failure_threshold: int = 5
    """This many auth failures of one actor within auth_failure_window_s raise an alert."""
    auth_failure_window_s: float = 60.0
    busy_timeout_s: float = 5.0
    """How long one commit waits for another process's write lock before backing off."""


async def run_audit(
    settings: Settings,
    *,
    db_path: Path | None = None,
    stop: asyncio.Event | None = None,
    ready: asyncio.Event | None = None,
    options: AuditOptions | None = None,
) -> None:
    """Run the audit writer until ``stop`` is set (forever if None)."""
    path = db_path or default_db_path(settings.data_path)
    stop = stop or asyncio.Event()
    options = options or AuditOptions()
    with WriterLock(path):
        conn = open_db(path, busy_timeout_s=options.busy_timeout_s)
        try:
            writer = Writer(conn)
            try:
                async with await Bus.for_settings(settings, name="taskbus-audit") as bus:
                    if not await _until_answered(
                        lambda: bus.ensure_streams(events_max_age_s=settings.events_max_age_days * 86_400), "its streams", stop
                    ):
                        return
                    service = AuditService(
                        bus,
                        writer,
                        options,
                        alert_command=settings.alert_command,
                        writer_name=settings.audit_writer_name,
                    )
                    await service.run(stop, ready=ready)
            finally:
                writer.close()
        finally:
            conn.close()


async def _until_answered(call: Callable[[], Awaitable[Any]], what: str, stop: asyncio.Event) -> bool:
    """``call()`` until JetStream answers it (see ``NOT_YET``): a cluster still electing its
    meta leader, a node that just died or a loaded machine can leave a stream or consumer
    create unanswered for many seconds, and the writer's job is to wait for the bus, not to
    crash on it. False when ``stop`` was set first."""
    backoff = Backoff(0.5, 10.0)
    while not stop.is_set():
        try:
            await call()
            return True
        except NOT_YET as exc:  # say so and keep waiting
            logger.warning("audit cannot set up %s yet (JetStream: %s %s); retrying", what, type(exc).__name__, exc)
            await backoff.sleep(until=stop)
    return False


@dataclass(kw_only=False)
class _Source:
    stream: str
    """Row ``stream`` value: events or audit."""
    stream_name: str
    subject: str
    durable: str
    pull: BatchPull | None = None
    highest: int = 0
    """Highest stream sequence handed to the writer."""
    reconnects: int = 0
    """The connection's reconnect count when the consumer was (re)created."""


class AuditService:
    def __init__(self, bus: Bus, writer: Writer, options: AuditOptions, *, alert_command: str = "", writer_name: str = "") -> None:
        self.bus = bus
        self.consumers = consumer_names(writer_name)
        self.writer_name = writer_name
        self.writer = writer
        self.options = options
        self.alerter = Alerter(
            bus.nc,
            bus.subjects,
            command=alert_command,
            hook_timeout_s=options.alert_timeout_s,
            rules=AlertRules(auth_threshold=options.auth_failure_threshold, auth_window_s=options.auth_failure_window_s),
        )
        self._queue: asyncio.Queue[tuple[list[Incoming], Msg]] = asyncio.Queue(maxsize=8)
        self._fetchers_running = 0
        self._last_head_pub = 0.0
        self._published_row = -1
        self._stats = [0, 0, 0, 0]  # stored, duplicates, malformed, batches since last log line
        self._last_log = time.monotonic()

    async def run(self, stop: asyncio.Event, *, ready: asyncio.Event | None = None) -> None:
        subjects = self.bus.subjects
        sources = [
            _Source(EVENTS, subjects.events_stream, subjects.events_all(), self.consumers[0]),
            _Source(NOTICES, subjects.audit_stream, subjects.audit_all(), self.consumers[1]),
        ]
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-db")
        try:
            for source in sources:
                first = self.writer.last_seq.get(source.stream, 0) + 1
                subscribe = functools.partial(self._subscribe, source, first)
                if not await _until_answered(subscribe, f"its consumer on {source.stream_name}", stop):
                    return
            logger.info(
                "audit writer started: head row %d, resuming events after seq %d, notices after seq %d",
                self.writer.head_id,
                self.writer.last_seq.get(EVENTS, 0),
                self.writer.last_seq.get(NOTICES, 0),
            )
            if ready is not None:
                ready.set()
            try:
                async with asyncio.TaskGroup() as tg:
                    self._fetchers_running = len(sources)
                    for source in sources:
                        tg.create_task(self._fetch_loop(source, stop))
                    tg.create_task(self._write_loop(executor))
                    tg.create_task(self._head_loop(stop))
                    tg.create_task(self.alerter.run())
            except BaseExceptionGroup as group:  # one clear error for the CLI, not a group
                raise first_error(group) from None
        finally:
            executor.shutdown(wait=True)
            for source in sources:
                if source.pull is not None:
                    await source.pull.stop()
        self._log_progress(force=True)
        logger.info("audit writer stopped at row %d", self.writer.head_id)

    async def _subscribe(self, source: _Source, start: int) -> None:
        """(Re)create the durable consumer to deliver from stream sequence ``start``."""
        js = self.bus.js
        if source.pull is not None:
            await source.pull.stop()
            source.pull = None
        with contextlib.suppress(NotFoundError):
            await js.delete_consumer(source.stream_name, source.durable)
        config = ConsumerConfig(
            durable_name=source.durable,
            ack_policy=AckPolicy.ALL,
            deliver_policy=DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=start,
            ack_wait=self.options.ack_wait_s,
            max_ack_pending=100_000,
            filter_subject=source.subject,
        )
        await js.add_consumer(source.stream_name, config)
        pull = BatchPull(
            self.bus.nc,
            source.stream_name,
            source.durable,
            batch=self.options.fetch_batch,
            max_buffered=self.options.max_batch * 2,
        )
        source.pull = await pull.start()
        source.reconnects = self.bus.nc.stats["reconnects"]
        source.highest = start - 1

    async def _resync(self, source: _Source, why: str) -> None:
        """After a reconnect or a failed pull, messages in flight may be lost while the server
        counts them as delivered (they would only come back after ack_wait, out of order).
        Recreating the consumer right after the highest sequence received closes that gap."""
        start = max(source.highest, self.writer.last_seq.get(source.stream, 0)) + 1
        logger.warning("audit %s: %s; re-reading %s from seq %d", source.stream, why, source.stream_name, start)
        await self._subscribe(source, start)

    async def _fetch_loop(self, source: _Source, stop: asyncio.Event) -> None:
        nc = self.bus.nc
        backoff = Backoff(0.5, 10.0)
        try:
            while not stop.is_set():
                try:
                    if nc.stats["reconnects"] != source.reconnects:
                        await self._resync(source, "NATS reconnected")
                    elif source.pull is None or source.pull.failed:
                        await self._resync(source, "the pull consumer failed")
                    assert source.pull is not None
                    msgs = await source.pull.take(timeout=self.options.fetch_wait_s)
                    backoff.reset()
                    if not msgs:
                        continue
                    items = [(source.stream, stream_seq(m), m.subject, m.data) for m in msgs]
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # disconnected, consumer gone: log, retry, keep the loop
                    logger.warning("audit fetch from %s failed: %s; retrying", source.stream, exc)
                    if source.pull is not None:
                        source.pull.failed = True
                    await backoff.sleep(until=stop)
                    continue
                source.highest = max(source.highest, items[-1][1])
                await self._queue.put((items, msgs[-1]))
        finally:
            self._fetchers_running -= 1

    async def _write_loop(self, executor: ThreadPoolExecutor) -> None:
        try:
            while self._fetchers_running or not self._queue.empty():
                try:
                    items, last = await asyncio.wait_for(self._queue.get(), 0.5)
                except TimeoutError:
                    continue
                batch, acks = list(items), [last]
                while not self._queue.empty() and len(batch) < self.options.max_batch:
                    more, more_last = self._queue.get_nowait()
                    batch.extend(more)
                    acks.append(more_last)
                result = await self._store(executor, batch)
                await self._ack(acks)  # only after the commit
                self._count(result)
                await self.alerter.handle(result.notable)
            await self._publish_head()
        finally:
            self.alerter.close()

    async def _call(self, executor: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
        if self.options.write_in_thread:
            return await asyncio.get_running_loop().run_in_executor(executor, fn, *args)
        return fn(*args)

    async def _store(self, executor: ThreadPoolExecutor, batch: list[Incoming]) -> BatchResult:
        """Prepare and commit one batch; while another process holds the database's write
        lock (a long prune) or the disk is full, retry with backoff instead of giving up
        (nothing is acked meanwhile, so nothing is lost; the streams keep the messages)."""
        prepared = await self._call(executor, self.writer.prepare, batch)
        backoff = Backoff(0.2, 5.0)
        while True:
            try:
                return await self._call(executor, self.writer.commit, prepared)
            except sqlite3.DatabaseError as exc:
                if not is_retryable(exc):
                    raise AuditError(
                        f"cannot write the audit database: {exc}. Nothing was acked; fix the cause "
                        "(permissions? a damaged file?) and restart: the writer resumes where it stopped"
                    ) from exc
                delay = backoff.next_delay()
                what = "has a full disk (free space)" if is_full(exc) else "is busy"
                logger.warning("audit database %s (%s); nothing acked, retrying the batch in %.1fs", what, exc, delay)
                await asyncio.sleep(delay)

    async def _ack(self, msgs: Sequence[Msg]) -> None:
        # Only the last message per stream matters with AckPolicy.ALL; acking each fetch's
        # last message is cheap and keeps the consumer's ack floor exact.
        for msg in msgs:
            try:
                await msg.ack()
            except Exception as exc:  # a lost ack only means a redelivery, which is skipped
                logger.warning("ack failed (%s); the batch will be redelivered and skipped", exc)

    def _count(self, result: BatchResult) -> None:
        s = self._stats
        s[0] += result.stored
        s[1] += result.duplicates
        s[2] += result.malformed
        s[3] += 1
        self._log_progress()

    def _log_progress(self, *, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_log < self.options.log_interval_s:
            return
        stored, dups, malformed, batches = self._stats
        if batches:
            logger.info(
                "audit: stored %d rows in %d batches (%d duplicates skipped, %d malformed) in %.1fs; head row %d",
                stored,
                batches,
                dups,
                malformed,
                now - self._last_log,
                self.writer.head_id,
            )
        self._stats = [0, 0, 0, 0]
        self._last_log = now

    async def _publish_head(self) -> None:
        self._last_head_pub = time.monotonic()
        row, digest = self.writer.head
        self._published_row = row
        try:
            await self.bus.nc.publish(
                self.bus.subjects.audit_head(), encode(ChainHead(row=row, hash=digest.hex(), writer=self.writer_name))
            )
        except Exception as exc:
            logger.warning("cannot publish the audit chain head: %s", exc)

    async def _head_loop(self, stop: asyncio.Event) -> None:
        """Publish the head when it moved (at most once a second) and every head_interval_s."""
        await self._publish_head()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            idle = time.monotonic() - self._last_head_pub
            if self.writer.head[0] != self._published_row or idle >= self.options.head_interval_s:
                await self._publish_head()
