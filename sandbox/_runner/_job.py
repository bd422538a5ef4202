"""Handling one job message, from checks to ``finished`` to the ack.

Order of checks, before anything runs:
1. the payload decodes (else: ``term``, a ``security`` event and ``finished failed``
   when the task id is known from ``Nats-Msg-Id``, else an audit notice);
2. a job whose signature verifies is claimed once, durably: the claims KV maps its task id
   to the stream sequence of the job message that claimed it (create-if-absent, shared by
   every runner). Another message for a claimed task id is a replay (a captured job
   published again): ``term``, a ``replayed_job`` audit notice, nothing runs. A redelivery
   of the claiming message (same sequence) goes on;
3. the task is not already finished (a redelivery after the ack was lost: just ack);
4. the task was not started by a runner that died (``finished failed runner_lost``,
   never a silent second run, unless the job is marked retryable);
5. the policy signature verifies (else ``security forged_policy`` and ``finished denied``);
6. the job has not expired (``policy.expires_at``; else ``security expired_job`` and
   ``finished denied``).
The job is acked only after its ``finished`` event is stored.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import time
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from nats.aio.msg import Msg
from nats.js.errors import KeyWrongLastSequenceError
from nats.js.kv import KeyValue

from bus import (
    Accepted,
    AuditNotice,
    Bus,
    Cancel,
    Finished,
    InvalidInput,
    Job,
    Log,
    MessageDecodeError,
    SandboxTimeout,
    Security,
    SignatureError,
    Subjects,
    TaskbusError,
    check_token,
    decode_control,
    decode_job,
    kind_of,
    verify_job,
)

from ._events import TaskEvents, TaskPreempted, task_history
from ._task import TaskOutcome

logger = logging.getLogger(__name__)

RECANCEL_AFTER_S = 5.0
"""A cancelled task still running after this long is cancelled again (see ``_recancel``)."""

Execute = Callable[[Job, TaskEvents], Coroutine[Any, Any, TaskOutcome]]


class JobHandler:
    """Shared by a runner's pull loops; one ``handle`` call per job message."""

    def __init__(
        self,
        bus: Bus,
        *,
        secret: str,
        runner_id: str,
        max_bytes: int,
        ack_wait_s: float,
        is_running: Callable[[str | None, str], bool] = lambda _runner_id, _task_id: False,
        peers_heard: Callable[[], bool] = lambda: True,
        on_event: Callable[[Any], None] | None = None,
    ) -> None:
        self.bus = bus
        self.subjects: Subjects = bus.subjects
        self.secret = secret
        self.runner_id = runner_id
        self.max_bytes = max_bytes
        self.keepalive_s = max(ack_wait_s / 3, 0.5)
        self.is_running = is_running
        self.peers_heard = peers_heard
        self.running: dict[str, asyncio.Task[Any]] = {}
        self.cancel_reasons: dict[str, str] = {}
        self.on_event = on_event
        self._claims: KeyValue | None = None

    async def handle(self, msg: Msg, kind: str, execute: Execute) -> None:
        keepalive = asyncio.create_task(self._keepalive(msg), name="job-keepalive")
        try:
            await self._handle(msg, kind, execute)
        finally:
            keepalive.cancel()
            await asyncio.gather(keepalive, return_exceptions=True)

    async def _keepalive(self, msg: Msg) -> None:
        while True:
            await asyncio.sleep(self.keepalive_s)
            try:
                await msg.in_progress()
            except Exception as exc:
                logger.debug("in-progress ack failed: %s", exc)

    async def _handle(self, msg: Msg, kind: str, execute: Execute) -> None:
        try:
            job = decode_job(msg.data, max_bytes=self.max_bytes)
            if kind_of(job.request) != kind:
                raise MessageDecodeError(f"a {kind_of(job.request)} job on the {kind} subject", type_name="Job")
        except MessageDecodeError as exc:
            await self._reject_malformed(msg, exc)
            return
        try:
            verify_job(job, self.secret)
            forged: SignatureError | None = None
        except SignatureError as exc:
            forged = exc
        if forged is None and not await self._claim(msg, job):
            await self._refuse_replay(msg, job)
            return
        events, last = await TaskEvents.resume(self.bus, job.task_id)
        events.on_event = self.on_event
        if isinstance(last, Finished):
            logger.info("task %s already finished (%s); acking the redelivered job", job.task_id, last.status)
            await msg.ack()
            return
        if last is not None and not isinstance(last, Accepted):
            if job.task_id in self.running:
                logger.info("task %s: a stale copy of a job this runner is running; ignoring it", job.task_id)
                return
            cost, usage, owner = await task_history(self.bus, job.task_id, last.seq)  # what it spent is still charged
            if owner != self.runner_id and self.is_running(owner, job.task_id):
                # its runner's heartbeat still lists it: the ack was late (a NATS blip), not lost.
                # (A runner restarted under the same id heartbeats too, but without the task.) A
                # `complete` has no `started` naming its runner (owner None): any live peer's counts.
                logger.info("task %s: runner %s still runs it; leaving the redelivered job to it", job.task_id, owner or "(a peer)")
                await msg.nak(delay=self.keepalive_s * 2)
                return
            if not self.peers_heard():  # right after our reconnect the peers' task lists are stale: judge later
                logger.info("task %s: started elsewhere; waiting for the runners' heartbeats after a reconnect", job.task_id)
                await msg.nak(delay=self.keepalive_s * 2)
                return
            if not job.retryable:
                await events.emit(Log, stream="runner", line=f"runner {self.runner_id} found this task started by a runner that stopped")
                await events.finish(
                    "failed",
                    reason="runner_lost",
                    cost_usd=cost,
                    usage=usage,
                    result="the runner running this task stopped before it finished; submit it again",
                )
                await msg.ack()
                return
            await events.emit(Log, stream="runner", line="the previous runner stopped; retrying (job is retryable)")
        if forged is not None:
            await events.emit(Security, kind="forged_policy", severity="critical", detail=str(forged))
            await events.finish("denied", reason="bad_signature", result=f"{forged}; nothing was run")
            await msg.ack()
            return
        expires = job.policy.expires_at
        if expires is not None and datetime.now(UTC) > expires:
            detail = f"job expired at {expires.isoformat()} (signed {job.policy.issued_at.isoformat()})"
            await events.emit(Security, kind="expired_job", severity="warning", detail=detail)
            await events.finish("denied", reason="expired", result=f"{detail}: it waited too long or was published again; nothing was run")
            await msg.ack()
            return
        await self._run(msg, job, events, execute)

    async def _claim(self, msg: Msg, job: Job) -> bool:
        """Claim the job's task id for this job message. True when it is ours to handle (a
        first claim, or a redelivery of the message that claimed it); False for a replay."""
        if self._claims is None:
            self._claims = await self.bus.js.key_value(self.subjects.claims_bucket)
        mine = f"{msg.metadata.sequence.stream} {job.policy.nonce}".encode()
        try:
            await self._claims.create(job.task_id, mine)
            return True
        except KeyWrongLastSequenceError:
            entry = await self._claims.get(job.task_id)
            return entry.value == mine

    async def _refuse_replay(self, msg: Msg, job: Job) -> None:
        seq = msg.metadata.sequence.stream
        logger.warning("task %s: job message %s is a replay of a job already taken; refused", job.task_id, seq)
        notice = AuditNotice(
            kind="replayed_job",
            actor=f"runner:{self.runner_id}",
            task_id=job.task_id,
            code="replayed_job",
            detail={
                "severity": "critical",
                "subject": msg.subject,
                "stream_seq": seq,
                "reason": "a signed job for a task id that a runner already took was published again; nothing was run",
            },
        )
        await self.bus.publish(self.subjects.audit("replayed_job"), notice)
        await msg.term()

    async def _run(self, msg: Msg, job: Job, events: TaskEvents, execute: Execute) -> None:
        started = time.monotonic()
        control = await self.bus.nc.subscribe(self.subjects.control(job.task_id), cb=self._on_control)
        work = asyncio.create_task(execute(job, events), name=f"task-{job.task_id}")
        self.running[job.task_id] = work
        try:
            outcome = await work
        except asyncio.CancelledError:
            reason = self.cancel_reasons.pop(job.task_id, None)
            if reason is None:  # our own caller is being cancelled: not a task cancel
                raise
            outcome = TaskOutcome(status="cancelled", reason=reason, result=_cancel_text(reason), model=job.policy.model)
        except TaskPreempted:
            outcome = None
        except (SandboxTimeout, TimeoutError):
            outcome = TaskOutcome(
                status="timeout", reason="wall_clock", result=f"the task ran out of its {job.policy.timeout_s}s time limit"
            )
        except InvalidInput as exc:
            outcome = TaskOutcome(status="failed", reason=exc.code, result=exc.describe())
        except TaskbusError as exc:
            logger.warning("task %s failed: %s", job.task_id, exc)
            outcome = TaskOutcome(status="failed", reason=exc.code, result=exc.describe())
        except OSError as exc:
            if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
                logger.exception("task %s crashed in the runner", job.task_id)
                outcome = TaskOutcome(status="failed", reason="runner_error", result="the runner hit an internal error; see its log")
            else:
                logger.error("task %s: the runner's disk is full (%s)", job.task_id, exc)
                outcome = TaskOutcome(
                    status="failed",
                    reason="runner_disk_full",
                    result="the runner's disk is full (no space left in its data dir): the task could not run; "
                    "retry later or on another runner (operators: free space in the runner's data dir)",
                )
        except Exception:
            logger.exception("task %s crashed in the runner", job.task_id)
            outcome = TaskOutcome(status="failed", reason="runner_error", result="the runner hit an internal error; see its log")
        finally:
            self.running.pop(job.task_id, None)
            await control.unsubscribe()
        if outcome is None:
            logger.info("task %s was finished elsewhere (cancelled before start); dropping it", job.task_id)
            await msg.ack()
            return
        await events.finish(
            outcome.status,
            result=outcome.result,
            reason=outcome.reason,
            usage=outcome.usage,
            cost_usd=outcome.cost_usd,
            duration_ms=int((time.monotonic() - started) * 1000),
            turns=outcome.turns,
            model=outcome.model or job.policy.model,
            diff=outcome.diff,
        )
        await msg.ack_sync()
        logger.info("task %s %s in %.2fs ($%.6f)", job.task_id, outcome.status, time.monotonic() - started, outcome.cost_usd)

    async def _on_control(self, msg: Msg) -> None:
        try:
            command = decode_control(msg.data)
        except MessageDecodeError as exc:
            logger.warning("ignoring a malformed control message on %s: %s", msg.subject, exc)
            return
        if isinstance(command, Cancel):
            self.cancel(command.task_id, "cancelled_by_caller")
        if msg.reply:
            await msg.respond(b'{"ok":true}')

    def cancel(self, task_id: str, reason: str) -> bool:
        work = self.running.get(task_id)
        if work is None or work.done():
            return False
        self.cancel_reasons.setdefault(task_id, reason)
        work.cancel()
        asyncio.get_running_loop().call_later(RECANCEL_AFTER_S, self._recancel, task_id, work)
        return True

    def _recancel(self, task_id: str, work: asyncio.Task[Any]) -> None:
        """Cancel again while the task still runs: on Python 3.11 ``asyncio.wait_for`` (used
        by nats-py for every request) swallows a cancellation that races a completing
        future, so one ``Task.cancel()`` can be lost under load. A second one during a
        slow teardown only stops waiting for it; the teardown itself is shielded."""
        if work.done() or self.running.get(task_id) is not work:
            return
        logger.warning("task %s still running %.0fs after its cancel; cancelling again", task_id, RECANCEL_AFTER_S)
        work.cancel()
        asyncio.get_running_loop().call_later(RECANCEL_AFTER_S, self._recancel, task_id, work)

    async def _reject_malformed(self, msg: Msg, exc: MessageDecodeError) -> None:
        task_id = _task_id_from_headers(msg)
        logger.warning("malformed job on %s (task %s): %s", msg.subject, task_id or "?", exc)
        if task_id:
            events, last = await TaskEvents.resume(self.bus, task_id)
            events.on_event = self.on_event
            if not isinstance(last, Finished):
                await events.emit(Security, kind="malformed_job", severity="warning", detail=str(exc)[:1000])
                await events.finish("failed", reason="malformed_job", result=exc.describe())
        else:
            notice = AuditNotice(
                kind="malformed_job",
                actor=f"runner:{self.runner_id}",
                code=exc.code,
                detail={"subject": msg.subject, "error": str(exc)[:1000]},
            )
            await self.bus.publish(self.subjects.audit("malformed_job"), notice)
        await msg.term()


def _task_id_from_headers(msg: Msg) -> str | None:
    value = (msg.headers or {}).get("Nats-Msg-Id")
    if not value:
        return None
    try:
        return check_token(value, "task id")
    except TaskbusError:
        return None


def _cancel_text(reason: str) -> str:
    if reason == "runner_shutdown":
        return "the runner shut down before the task finished; submit it again"
    return "the task was cancelled"
