"""The streams on a real nats-server: creation, dedupe, work-queue delivery, redelivery."""

from __future__ import annotations

import asyncio

import nats.errors
import pytest
from nats.js.api import ConsumerConfig, RetentionPolicy

import bus as bus_module
from bus import Bus, BusError, PublishError, Subjects
from bus._streams import wait_for_leader


async def test_ensure_streams_is_idempotent_and_creates_what_the_design_lists(bus: Bus) -> None:
    s = bus.subjects
    await bus.ensure_streams()
    await bus.ensure_streams()
    jobs = await bus.js.stream_info(s.jobs_stream)
    assert jobs.config.retention == RetentionPolicy.WORK_QUEUE
    assert jobs.config.subjects == [s.jobs_all()]
    assert jobs.config.duplicate_window and jobs.config.duplicate_window > 0
    events = await bus.js.stream_info(s.events_stream)
    assert events.config.retention == RetentionPolicy.LIMITS and events.config.subjects == [s.events_all()]
    audit = await bus.js.stream_info(s.audit_stream)
    assert audit.config.subjects == [s.audit_all()]
    await bus.js.object_store(s.artifacts_bucket)
    await bus.js.key_value(s.cache_bucket)


async def test_concurrent_ensure_streams_from_several_processes_agree(nats_url: str, subjects: Subjects) -> None:
    buses = [await Bus.open(nats_url, subjects) for _ in range(4)]
    try:
        await asyncio.gather(*(b.ensure_streams() for b in buses))
        # looked up by name: a listing is paged, and the session's server holds many streams
        for name in (subjects.jobs_stream, subjects.events_stream, subjects.audit_stream):
            assert (await buses[0].js.stream_info(name)).config.name == name
    finally:
        for b in buses:
            await b.close()


async def test_a_job_published_twice_with_the_same_msg_id_is_stored_once(bus: Bus) -> None:
    subject = bus.subjects.jobs("task")
    first = await bus.publish(subject, b'{"n":1}', msg_id="t_same")
    second = await bus.publish(subject, b'{"n":1}', msg_id="t_same")
    assert first == second
    info = await bus.js.stream_info(bus.subjects.jobs_stream)
    assert info.state.messages == 1


async def test_each_job_goes_to_exactly_one_of_two_runners_sharing_the_durable_consumer(bus: Bus) -> None:
    s = bus.subjects
    consumer = s.job_consumer("task")
    subs = [
        await bus.js.pull_subscribe(s.jobs("task"), durable=consumer, stream=s.jobs_stream, config=ConsumerConfig(ack_wait=30))
        for _ in range(2)
    ]
    for i in range(40):
        await bus.publish(s.jobs("task"), f'{{"n":{i}}}'.encode(), msg_id=f"job-{i}")
    got: list[list[bytes]] = [[], []]

    async def pull(idx: int) -> None:
        while sum(map(len, got)) < 40:
            try:
                msgs = await subs[idx].fetch(batch=3, timeout=0.5)
            except TimeoutError:  # nats-py raises its own or, near the deadline, asyncio's
                continue
            for m in msgs:
                got[idx].append(m.data)
                await m.ack()

    async with asyncio.timeout(20):
        await asyncio.gather(pull(0), pull(1))
    everything = got[0] + got[1]
    assert len(everything) == 40 and len(set(everything)) == 40
    assert got[0] and got[1], "both runners should have received work"
    for sub in subs:
        await sub.unsubscribe()


async def test_an_unacked_job_is_redelivered_after_the_ack_wait(bus: Bus) -> None:
    s = bus.subjects
    sub = await bus.js.pull_subscribe(
        s.jobs("complete"), durable=s.job_consumer("complete"), stream=s.jobs_stream, config=ConsumerConfig(ack_wait=1)
    )
    await bus.publish(s.jobs("complete"), b"job", msg_id="only-job")
    (first,) = await sub.fetch(batch=1, timeout=2)
    assert first.metadata.num_delivered == 1  # not acked: the "runner" died
    async with asyncio.timeout(10):
        while True:
            try:
                (again,) = await sub.fetch(batch=1, timeout=1)
                break
            except nats.errors.TimeoutError:
                continue
    assert again.data == b"job" and again.metadata.num_delivered == 2
    await again.ack_sync()
    assert (await bus.js.stream_info(s.jobs_stream)).state.messages == 0
    await sub.unsubscribe()


async def test_publish_fails_with_a_clear_error_when_no_stream_takes_the_subject(bus: Bus) -> None:
    with pytest.raises(PublishError, match="not acknowledged after 2 attempts"):
        await bus.publish("nobody.listens.here", b"x", attempts=2, timeout=0.5)


async def test_events_replay_from_the_first_seq_for_a_late_follower(bus: Bus) -> None:
    from nats.js.api import DeliverPolicy

    subject = bus.subjects.events("t_late")
    now = bus_module.utcnow()
    for seq in (1, 2, 3):
        await bus.publish(subject, bus_module.Log(task_id="t_late", seq=seq, ts=now, line=f"l{seq}"))
    sub = await bus.js.subscribe(subject, ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    seen = [bus_module.decode_event((await sub.next_msg(timeout=2)).data).seq for _ in range(3)]
    assert seen == [1, 2, 3]
    await sub.unsubscribe()


async def test_waiting_for_a_leader_outlasts_a_stream_not_yet_known_everywhere(bus: Bus) -> None:
    """Right after a replicated stream is created on a loaded cluster, the node asked may still
    say "stream not found" (CI: a runner crashed at start on exactly that); the wait goes on
    until its deadline, and then says what to check."""
    name = f"LATE_{bus.subjects.prefix}"
    waiter = asyncio.create_task(wait_for_leader(bus.js, name, replicas=3, timeout=30))
    await asyncio.sleep(0.3)  # the waiter has been told "not found" a few times by now
    assert not waiter.done()
    await bus.js.add_stream(name=name, subjects=[f"{bus.subjects.prefix}.late.x"])
    await asyncio.wait_for(waiter, 30)
    with pytest.raises(BusError, match=r"has no leader after 0\.5s"):
        await wait_for_leader(bus.js, f"NEVER_{bus.subjects.prefix}", replicas=3, timeout=0.5)
