"""Ending a task that no runner has started, and undoing an admission that failed half-way.

Admission writes in five places, in order: the account's budget entry (the reservation),
the reservation's record and the task registry (together), the task's ``accepted`` event,
the job. When NATS stops answering between two of them (a node restart, a leader election,
a lost acknowledgement) the caller hears ``bus_error`` and is told to retry, so nothing of
this admission may keep the caller's money or one of its concurrency slots, and no task may
stay ``accepted`` for ever. :func:`undo_admission` closes it, in steps that are all safe
to repeat (the dispatcher retries it with backoff until NATS answers again):

1. the task's event history is ended with ``finished failed (admission_failed)`` at seq 2,
   published only if ``accepted`` is still the last event (``accepted`` is published first,
   with its own message id, when it never landed), so a job that did reach the queue is
   skipped by the runner that takes it (it sees the task finished);
2. the reservation is released (from the account's entry even when its record was never
   written) and the task recorded ``failed``.

A server that dies mid-admission cannot undo anything: ``sweep_abandoned`` (every server,
every minute) undoes the admissions whose reservation has been open for minutes while the
task has no event at all (a live admission publishes ``accepted`` milliseconds after its
reservation; a queued job has its ``accepted``, so it is never touched).

If a runner wrote first (the job's publish landed though its acknowledgement was lost), the
task runs and is settled like any other: the caller was told ``bus_error`` for a task that
does run; an idempotency id (``Nats-Msg-Id`` / ``idempotency_key``) makes its retry return
that task instead of starting a second one.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.js.errors import APIError

from bus import (
    SCHEMA_VERSION,
    Accepted,
    Backoff,
    Bus,
    BusError,
    DuplicateMessage,
    Event,
    Finished,
    JobKind,
    NotFound,
    encode,
    utcnow,
)
from profiles import Store

from ._followers import Followers

logger = logging.getLogger(__name__)

ADMISSION_FAILED = "admission_failed"
WRONG_LAST_SEQUENCE = 10071  # JetStream's error code for a failed Nats-Expected-Last-Subject-Sequence
ATTEMPTS = 5
UNDO_PATIENCE_S = 600.0
"""How long a half-done admission is retried before it is left to the stale-reservation sweep."""
UNDO_AT_CLOSE_S = 5.0
"""How long closing waits for admissions still being undone."""


async def finish_unstarted(bus: Bus, finished: Finished, *, accepted: Accepted | None = None) -> Event | None:
    """Publish ``finished`` (its seq must be 2) if ``accepted`` is still the task's last event.

    Returns the task's terminal event (``finished`` or one published earlier), or None
    when a runner has written since (it owns the task now). With ``accepted``, a task
    with no event at all gets that ``accepted`` first (its own message id, so a late
    copy of the original publish is a duplicate); without it, such a task is left alone.
    """
    task_id = finished.task_id
    subject = bus.subjects.events(task_id)
    for _ in range(ATTEMPTS):
        last = await bus.last_event(task_id)
        if last is None:
            if accepted is None:
                return None
            try:
                await bus.publish_unique(subject, accepted, msg_id=f"{task_id}-1", stream=bus.subjects.events_stream)
            except DuplicateMessage:
                pass  # the original ``accepted`` landed meanwhile
            continue
        stream_seq, event = last
        if isinstance(event, Finished):
            return event
        if not isinstance(event, Accepted):
            return None
        headers = {
            "Nats-Expected-Last-Subject-Sequence": str(stream_seq),
            "Nats-Msg-Id": f"{task_id}-{finished.seq}",
            "Taskbus-Schema": SCHEMA_VERSION,
        }
        try:
            ack = await bus.js.publish(subject, encode(finished), headers=headers, timeout=5)
        except APIError as exc:
            if exc.err_code == WRONG_LAST_SEQUENCE:
                continue  # a runner wrote first: read what it wrote
            raise
        if not ack.duplicate:
            return finished
    raise BusError(f"task {task_id}'s events kept changing while it was being ended; retry")


async def undo_admission(bus: Bus, store: Store, accepted: Accepted) -> bool:
    """Close the half-done admission of ``accepted.task_id`` (see the module's docstring).
    True: the task is ``failed`` (``admission_failed``) and nothing is reserved for it;
    False: a runner has the task, to be followed and settled as usual."""
    task_id = accepted.task_id
    summary = "the bus did not answer while this task was being admitted; nothing ran and nothing was charged"
    ending = Finished(task_id=task_id, seq=2, ts=utcnow(), status="failed", reason=ADMISSION_FAILED, result=summary)
    terminal = await finish_unstarted(bus, ending, accepted=accepted)
    if not isinstance(terminal, Finished) or terminal.reason != ADMISSION_FAILED:
        return False
    await store.abandon(
        task_id, accepted.key_id, profile=accepted.profile, kind=accepted.kind, error_code=ADMISSION_FAILED, summary=summary
    )
    logger.info("task %s: its half-done admission is undone (failed, %s, reservation released)", task_id, ADMISSION_FAILED)
    return True


async def sweep_abandoned(bus: Bus, store: Store, *, older_than_s: float) -> list[str]:
    """Undo the admissions left half-done by a server that died: reservations open for
    ``older_than_s`` whose task has no event. Returns their task ids."""
    undone: list[str] = []
    for task_id, key_id in await store.open_reservations(older_than_s):
        kind: JobKind = "task"
        if await bus.last_event(task_id) is not None:
            continue  # accepted (queued or running): its runner or the daily stale sweep ends it
        try:
            task = await store.get_task(task_id)
            profile, model = task.profile, task.model or ""
            kind = "complete" if task.kind == "complete" else "task"
        except NotFound:  # the server died before the task's record: what the key says
            profile, model = (await store.get_key(key_id)).profile, ""
        accepted = Accepted(task_id=task_id, seq=1, ts=utcnow(), kind=kind, key_id=key_id, profile=profile, model=model)
        if await undo_admission(bus, store, accepted):
            undone.append(task_id)
    if undone:
        logger.warning("undid %d admission(s) left half-done by a server that stopped: %s", len(undone), ", ".join(undone[:10]))
    return undone


class AdmissionUndo:
    """The dispatcher's undos of half-done admissions, each a background task retried with
    backoff until NATS answers (for ``UNDO_PATIENCE_S``; then the sweep's turn)."""

    def __init__(self, bus: Bus, store: Store, followers: Followers) -> None:
        self.bus = bus
        self.store = store
        self.followers = followers
        self._running: set[asyncio.Task[None]] = set()

    def start(self, accepted: Accepted, exc: BaseException) -> None:
        """Admission of ``accepted`` failed with ``exc`` after it may have written something."""
        task_id = accepted.task_id
        logger.warning("task %s: admission failed half-way (%s); undoing it", task_id, _describe(exc))
        self.followers.drop(task_id)
        undo = asyncio.get_running_loop().create_task(self._run(accepted), name=f"undo-{task_id}")
        self._running.add(undo)
        undo.add_done_callback(self._running.discard)

    async def _run(self, accepted: Accepted) -> None:
        task_id = accepted.task_id
        backoff = Backoff(0.5, 10.0)
        deadline = time.monotonic() + UNDO_PATIENCE_S
        while True:
            try:
                async with asyncio.timeout(30):
                    if not await undo_admission(self.bus, self.store, accepted):
                        logger.info("task %s: a runner took its job after all; following it", task_id)
                        self.followers.follow(task_id)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if time.monotonic() > deadline:
                    logger.error(
                        "task %s: its half-done admission could not be undone in %.0f s (%s); the stale-reservation sweep releases it",
                        task_id,
                        UNDO_PATIENCE_S,
                        _describe(exc),
                    )
                    return
                delay = backoff.next_delay()
                logger.warning("task %s: undoing its admission failed (%s); retrying in %.1fs", task_id, _describe(exc), delay)
                await asyncio.sleep(delay)

    async def aclose(self) -> None:
        """Give the undos still running a moment; what is left goes to the sweep."""
        if not self._running:
            return
        await asyncio.wait(set(self._running), timeout=UNDO_AT_CLOSE_S)
        for undo in list(self._running):
            undo.cancel()
        if self._running:
            await asyncio.wait(set(self._running), timeout=1.0)


def _describe(exc: BaseException) -> str:
    """``exc`` for a log line: its type, and its message's first line when it has one."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0][:200]}" if text else type(exc).__name__
