"""An admission that fails half-way (NATS stopped answering between its writes) is undone:
the caller's money and concurrency slot come back, the task ends ``failed
(admission_failed)`` in the registry and in its events, and a job that did reach the
queue is not run. A runner that wrote first keeps its task. Real nats-server and
profiles Store; the failures are made real (the jobs stream is gone, a compare-and-set
landed without its follow-up write)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import pytest

from bus import (
    Accepted,
    Finished,
    NotFound,
    Settings,
    Started,
    SubmitAccepted,
    SubmitRejected,
    TaskRequest,
    canonical,
    decode_event,
    decode_reply,
    new_task_id,
    utcnow,
)
from server._admission_undo import ADMISSION_FAILED, sweep_abandoned, undo_admission
from server._dispatch import Caller
from server._idempotency import claim_key


async def _submit(nc: Any, subject: str, key: str) -> Any:
    msg = await nc.request(subject, b'{"description": "undo me"}', headers={"Authorization": f"Bearer {key}"}, timeout=60)
    return decode_reply(msg.data)


async def _events(stack: Any, task_id: str) -> list[Any]:
    sub = await stack.bus.js.subscribe(stack.bus.subjects.events(task_id), ordered_consumer=True)
    out = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=1)
            except nats.errors.TimeoutError:
                return out
            out.append(decode_event(msg.data))
    finally:
        await sub.unsubscribe()


async def _until(check: Any, *, timeout: float = 30) -> Any:
    async with asyncio.timeout(timeout):
        while not (result := await check()):
            await asyncio.sleep(0.05)
        return result


def _accepted(task_id: str, key_id: str) -> Accepted:
    return Accepted(task_id=task_id, seq=1, ts=utcnow(), kind="task", key_id=key_id, profile="developer", model="claude-haiku-4-5")


async def test_a_job_that_cannot_be_queued_gives_back_the_slot_and_the_money(settings: Settings, make_stack) -> None:
    async with make_stack(settings) as stack:
        await stack.store.update_profile("developer", max_concurrent=1)
        key = await stack.key("developer", day_usd=5.0)
        prefix = (await stack.store.authenticate(key)).prefix
        await stack.bus.js.delete_stream(stack.bus.subjects.jobs_stream)  # the job's publish now fails
        nc = await nats.connect(settings.nats_url)
        try:
            reply = await _submit(nc, stack.bus.subjects.submit("task"), key)
            assert isinstance(reply, SubmitRejected), reply
            assert "retry" in reply.message, reply.message

            async def undone() -> Any:
                tasks = await stack.store.list_tasks(prefix, limit=10)
                return tasks if tasks and tasks[0].status == "failed" else None

            [task] = await _until(undone)
            assert task.error_code == ADMISSION_FAILED and task.cost_usd == 0.0
            status = await stack.store.remaining_budget(prefix)
            assert status.running == 0 and status.day.used_usd == 0.0, status
            events = await _events(stack, task.task_id)
            assert [type(e).__name__ for e in events] == ["Accepted", "Finished"], events
            assert events[1].status == "failed" and events[1].reason == ADMISSION_FAILED
            await stack.bus.ensure_streams()
            again = await _submit(nc, stack.bus.subjects.submit("task"), key)  # max_concurrent 1: the slot is free
            assert isinstance(again, SubmitAccepted), again
        finally:
            await nc.close()


async def test_a_reservation_that_landed_without_its_record_is_released(settings: Settings, make_stack) -> None:
    async with make_stack(settings) as stack:
        key = await stack.key("developer", day_usd=5.0)
        prefix = (await stack.store.authenticate(key)).prefix
        task_id = new_task_id()
        await stack.store._reserve(prefix, task_id, 0.5)  # the compare-and-set landed; its answer was "lost"
        before = await stack.store.remaining_budget(prefix)
        assert before.running == 1 and before.day.used_usd == 0.5
        accepted = _accepted(task_id, prefix)
        for _ in range(2):  # safe to repeat (it is retried until NATS answers)
            assert await undo_admission(stack.bus, stack.store, accepted)
            status = await stack.store.remaining_budget(prefix)
            assert status.running == 0 and status.day.used_usd == 0.0, status
            task = await stack.store.get_task(task_id)
            assert task.status == "failed" and task.error_code == ADMISSION_FAILED
        events = await _events(stack, task_id)
        assert [(type(e).__name__, e.seq) for e in events] == [("Accepted", 1), ("Finished", 2)]


async def test_a_task_a_runner_started_first_is_kept_and_settled_normally(settings: Settings, make_stack) -> None:
    async with make_stack(settings) as stack:
        key = await stack.key("developer", day_usd=5.0)
        prefix = (await stack.store.authenticate(key)).prefix
        task_id = new_task_id()
        await stack.store.admit(prefix, task_id, 0.5, profile="developer", kind="task")
        subject = stack.bus.subjects.events(task_id)
        await stack.bus.publish(subject, _accepted(task_id, prefix), msg_id=f"{task_id}-1")
        await stack.bus.publish(
            subject, Started(task_id=task_id, seq=2, ts=utcnow(), runner_id="r1", backend="bwrap"), msg_id=f"{task_id}-2"
        )
        assert not await undo_admission(stack.bus, stack.store, _accepted(task_id, prefix))
        status = await stack.store.remaining_budget(prefix)
        assert status.running == 1 and status.day.used_usd == 0.5  # still the runner's to settle
        assert (await stack.store.get_task(task_id)).status == "accepted"
        events = await _events(stack, task_id)
        assert not any(isinstance(e, Finished) for e in events)


async def test_a_stale_claim_whose_task_was_undone_returns_that_task_not_a_second_admission(settings: Settings, make_stack) -> None:
    async with make_stack(settings) as stack:
        key = await stack.key("developer", day_usd=5.0)
        record = await stack.store.authenticate(key)
        caller = Caller(record.prefix, record.profile)
        request = TaskRequest(description="once, even after an undo")
        task_id = new_task_id()
        await stack.store.admit(record.prefix, task_id, 0.5, profile="developer", kind="task")
        assert await undo_admission(stack.bus, stack.store, _accepted(task_id, record.prefix))
        claims = stack.dispatcher._claims  # its server died before it could let go of the claim
        pending = {
            "state": "pending",
            "task_id": task_id,
            "at": time.time() - 3600,
            "fingerprint": hashlib.sha256(canonical(request)).hexdigest(),
        }
        await (await claims._bucket()).create(claim_key(record.prefix, "order-7"), json.dumps(pending).encode())
        submission = await stack.dispatcher.submit(caller, request, idempotency_key="order-7")
        assert submission.task_id == task_id
        watch = stack.dispatcher.live(task_id)
        async with asyncio.timeout(30):
            async for _ in watch.stream():
                pass
        assert watch.finished is not None and watch.finished.status == "failed" and watch.finished.reason == ADMISSION_FAILED
        assert (await stack.bus.js.stream_info(stack.bus.subjects.jobs_stream)).state.messages == 0  # nothing queued
        status = await stack.store.remaining_budget(record.prefix)
        assert status.running == 0 and status.day.used_usd == 0.0


async def test_the_sweep_undoes_what_a_dead_server_left_and_leaves_queued_jobs_alone(settings: Settings, make_stack) -> None:
    """A server killed between the reservation and ``accepted`` leaves a reservation and a
    task record with no event: every server's sweep undoes it (here with no age limit). A
    job waiting in the queue has its ``accepted``: it is not touched."""
    async with make_stack(settings) as stack:
        await stack.store.update_profile("developer", max_concurrent=2)
        key = await stack.key("developer", day_usd=5.0)
        prefix = (await stack.store.authenticate(key)).prefix
        dead, bare, queued = new_task_id(), new_task_id(), new_task_id()
        await stack.store.admit(prefix, dead, 0.5, profile="developer", kind="complete")  # its server died here
        await stack.store._reserve(prefix, bare, 0.25)  # ... or even before the records
        assert (await stack.store.remaining_budget(prefix)).running == 2
        await stack.store.update_profile("developer", max_concurrent=3)
        await stack.store.admit(prefix, queued, 0.5, profile="developer", kind="task")
        await stack.bus.publish(stack.bus.subjects.events(queued), _accepted(queued, prefix), msg_id=f"{queued}-1")

        assert sorted(await sweep_abandoned(stack.bus, stack.store, older_than_s=0)) == sorted([dead, bare])
        status = await stack.store.remaining_budget(prefix)
        assert status.running == 1 and status.day.used_usd == 0.5, status  # only the queued job's reservation
        for task_id, kind in ((dead, "complete"), (bare, "task")):
            task = await stack.store.get_task(task_id)
            assert (task.status, task.error_code, task.kind) == ("failed", ADMISSION_FAILED, kind)
            events = await _events(stack, task_id)
            assert [type(e).__name__ for e in events] == ["Accepted", "Finished"]
        assert (await stack.store.get_task(queued)).status == "accepted"
        assert await sweep_abandoned(stack.bus, stack.store, older_than_s=0) == []  # nothing left to undo


async def test_get_task_of_an_expired_id_says_it_expired_through_the_server(settings: Settings, make_stack) -> None:
    """The registry forgets tasks after TASKBUS_TASK_RETENTION_DAYS; an MCP caller asking for
    one hears that it expired (said from the id's own time), not "no task for this key"."""
    async with make_stack(settings) as stack:
        key = await stack.key("developer")
        record = await stack.store.authenticate(key)
        old = datetime.now(UTC) - timedelta(days=settings.task_retention_days + 1)
        value = (int(old.timestamp() * 1000) << 80) | 12345
        alphabet = "0123456789abcdefghjkmnpqrstvwxyz"  # bus.new_task_id's
        old_id = "t_" + "".join(alphabet[(value >> (5 * i)) & 31] for i in reversed(range(26)))
        with pytest.raises(NotFound, match=r"has expired.*TASKBUS_TASK_RETENTION_DAYS"):
            await stack.dispatcher.task_record(Caller(record.prefix, record.profile), old_id)
        with pytest.raises(NotFound, match="for this key") as unknown:
            await stack.dispatcher.task_record(Caller(record.prefix, record.profile), new_task_id())
        assert "expired" not in unknown.value.message
