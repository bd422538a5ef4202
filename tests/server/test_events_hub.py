"""The server's one events subscription (``server._events_hub``): a followed task reaches
its ``finished`` event, every event once and in order, even when live messages were
missed (dropped, or published while the server's connection was down), and without a
JetStream consumer per task."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from nats.js.errors import BadRequestError

from bus import Accepted, Bus, EmbeddedNats, Event, Finished, Log, Subjects, encode, new_task_id, utcnow
from server._dispatch_events import TaskWatch
from server._events_hub import EventsHub, follow

DEADLINE_S = 60.0


def accepted(task_id: str) -> Accepted:
    return Accepted(
        task_id=task_id,
        seq=1,
        ts=utcnow(),
        kind="complete",
        key_id="tb_test",
        profile="developer",
        model="claude-haiku-4-5",
        routing_reason="test",
    )


def log(task_id: str, seq: int) -> Log:
    return Log(task_id=task_id, seq=seq, ts=utcnow(), line=f"line {seq}")


def finished(task_id: str, seq: int) -> Finished:
    return Finished(task_id=task_id, seq=seq, ts=utcnow(), status="succeeded", result="done")


async def publish(bus: Bus, event: Event) -> None:
    await bus.publish(bus.subjects.events(event.task_id), event, msg_id=f"{event.task_id}-{event.seq}")


async def consumers(bus: Bus) -> int:
    return int((await bus.js.stream_info(bus.subjects.events_stream)).state.consumer_count)


async def test_many_followed_tasks_finish_through_one_subscription_without_a_consumer_each(bus: Bus) -> None:
    settled: list[str] = []

    async def on_finished(event: Finished) -> None:
        settled.append(event.task_id)

    async with EventsHub(bus) as hub, asyncio.TaskGroup() as tg:
        ids = [new_task_id() for _ in range(50)]
        watches = {t: TaskWatch(t) for t in ids}
        followers = [tg.create_task(follow(hub, hub.open(t), watches[t], fresh=True, on_finished=on_finished)) for t in ids]
        for t in ids:
            await publish(bus, accepted(t))
        assert await consumers(bus) == 1, "the hub's one consumer; following a task must not create another"
        for t in ids:
            await publish(bus, log(t, 2))
            await publish(bus, finished(t, 3))
        async with asyncio.timeout(DEADLINE_S):
            results = await asyncio.gather(*followers)
    assert [r.task_id for r in results] == ids
    assert sorted(settled) == sorted(ids), "each task settled exactly once"
    for t in ids:
        assert [e.seq for e in watches[t].events] == [1, 2, 3]


async def test_a_follower_that_missed_events_reads_them_from_the_stream_in_order(bus: Bus) -> None:
    """Events published before the inbox existed are what a dropped message looks like to the
    follower: the next live event's seq skips them, and it reads the stream."""
    task_id = new_task_id()
    await publish(bus, accepted(task_id))
    await publish(bus, log(task_id, 2))  # both missed by the live subscription
    seen: list[int] = []

    async def on_event(event: Event) -> None:
        seen.append(event.seq)

    async with EventsHub(bus) as hub:
        watch = TaskWatch(task_id)
        follower = asyncio.create_task(follow(hub, hub.open(task_id), watch, fresh=True, on_event=on_event))
        await publish(bus, finished(task_id, 3))
        async with asyncio.timeout(DEADLINE_S):
            result = await follower
    assert result.seq == 3 and seen == [1, 2, 3]
    assert hub.following == 1  # the caller closes the inbox (the dispatcher does in its finally)


async def test_a_late_follower_of_a_finished_task_gets_its_result_from_the_stream(bus: Bus) -> None:
    task_id = new_task_id()
    for event in (accepted(task_id), log(task_id, 2), finished(task_id, 3)):
        await publish(bus, event)
    async with EventsHub(bus) as hub:
        watch = TaskWatch(task_id)
        inbox = hub.open(task_id)
        try:
            async with asyncio.timeout(DEADLINE_S):
                result = await follow(hub, inbox, watch, fresh=False)
        finally:
            hub.close(inbox)
        assert hub.following == 0
    assert result.result == "done" and [e.seq for e in watch.events] == [1, 2, 3]


async def test_a_finished_event_published_while_the_servers_connection_was_down_is_not_lost(tmp_path: Path) -> None:
    """The task finishes while the follower's NATS is away (the event is stored through another
    node address of the same JetStream data); after the reconnect the follower finds it."""
    store, subjects = tmp_path / "js", Subjects("hub")
    task_id = new_task_id()
    first = EmbeddedNats(store, name="hub-node")
    first.start()
    try:
        follower_bus = await Bus.open(first.url, subjects, name="follower")
        await follower_bus.ensure_streams()
        async with follower_bus, EventsHub(follower_bus) as hub:
            watch = TaskWatch(task_id)
            inbox = hub.open(task_id)
            task = asyncio.create_task(follow(hub, inbox, watch, fresh=True))
            await publish(follower_bus, accepted(task_id))
            async with asyncio.timeout(DEADLINE_S):
                while watch.last_seq < 1:
                    await asyncio.sleep(0.01)
            first.stop()  # the follower's connection is down from here
            async with EmbeddedNats(store, name="hub-node") as elsewhere:  # same data, another port
                runner_bus = await Bus.open(elsewhere.url, subjects, name="runner")
                async with runner_bus:
                    await publish(runner_bus, finished(task_id, 2))
            first.start()  # back on the follower's address: it reconnects
            async with asyncio.timeout(DEADLINE_S):
                result = await task
            hub.close(inbox)
    finally:
        first.stop()
    assert result.seq == 2 and [e.seq for e in watch.events] == [1, 2]


async def test_an_event_the_stream_refused_never_reaches_the_follower(bus: Bus) -> None:
    """A preempting ``finished`` (a cancel racing the runner) that JetStream refuses for its
    expected last sequence must not end the task: only stored events count."""
    task_id = new_task_id()
    subject = bus.subjects.events(task_id)
    async with EventsHub(bus) as hub:
        watch = TaskWatch(task_id)
        inbox = hub.open(task_id)
        follower = asyncio.create_task(follow(hub, inbox, watch, fresh=True))
        await publish(bus, accepted(task_id))
        forged = Finished(task_id=task_id, seq=2, ts=utcnow(), status="cancelled", reason="cancelled_before_start")
        with pytest.raises(BadRequestError):  # wrong expected sequence: the stream refuses it
            await bus.js.publish(subject, encode(forged), headers={"Nats-Expected-Last-Subject-Sequence": "999999"})
        await publish(bus, log(task_id, 2))
        await publish(bus, finished(task_id, 3))
        async with asyncio.timeout(DEADLINE_S):
            result = await follower
        hub.close(inbox)
    assert result.status == "succeeded" and [type(e).__name__ for e in watch.events] == ["Accepted", "Log", "Finished"]


async def test_a_follow_retried_after_settlement_failed_returns_the_finished_event_to_settle_again(bus: Bus) -> None:
    """Settlement failing (NATS away) must not lose the task: the retry gets ``finished`` back
    although the watch already shows it, so the dispatcher settles it then."""
    task_id = new_task_id()
    attempts: list[int] = []

    async def settle_fails_once(event: Finished) -> None:
        attempts.append(event.seq)
        if len(attempts) == 1:
            raise ConnectionError("NATS went away while settling")

    async with EventsHub(bus) as hub:
        watch = TaskWatch(task_id)
        inbox = hub.open(task_id)
        follower = asyncio.create_task(follow(hub, inbox, watch, fresh=True, on_finished=settle_fails_once))
        await publish(bus, accepted(task_id))
        await publish(bus, finished(task_id, 2))
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(DEADLINE_S):
                await follower
        assert watch.finished is not None, "the caller still sees the result"
        async with asyncio.timeout(DEADLINE_S):
            again = await follow(hub, inbox, watch, fresh=False, on_finished=settle_fails_once)
        hub.close(inbox)
    assert again.seq == 2 and attempts == [2]  # the retry hands it back; the dispatcher settles it


async def test_a_task_submitted_after_a_nats_restart_is_heard_live(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The hub's ordered consumer dies with the server it was on; after the reconnect the hub
    subscribes again, so a task admitted then is followed from live messages. (Before, it
    was found only by the quiet check, 10 s later; here that check is switched off.)"""
    monkeypatch.setattr("server._events_hub.QUIET_CHECK_S", 3600.0)
    server = EmbeddedNats(tmp_path / "js", name="hub-restart")
    server.start()
    try:
        bus = await Bus.open(server.url, Subjects("hubr"), name="follower")
        await bus.ensure_streams()
        async with bus, EventsHub(bus) as hub:
            reconnects = bus.reconnects
            server.stop()
            await asyncio.sleep(1.0)  # the outage
            server.start()
            async with asyncio.timeout(DEADLINE_S):  # the hub has handled the reconnect: a later task
                while bus.reconnects == reconnects or hub._reconnects != bus.reconnects:
                    await asyncio.sleep(0.02)
            # the old connection's consumer died with its server; the hub has a new one
            assert await bus.js.consumers_info(bus.subjects.events_stream), "no consumer: new events go unheard"
            task_id = new_task_id()
            watch = TaskWatch(task_id)
            inbox = hub.open(task_id)
            follower = asyncio.create_task(follow(hub, inbox, watch, fresh=True))
            await publish(bus, accepted(task_id))
            await publish(bus, finished(task_id, 2))
            async with asyncio.timeout(DEADLINE_S):
                result = await follower
            hub.close(inbox)
    finally:
        server.stop()
    assert result.seq == 2 and [e.seq for e in watch.events] == [1, 2]


async def test_a_hub_whose_consumer_went_deaf_subscribes_again_and_its_followers_catch_up(
    bus: Bus, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """On a cluster the hub's server-side consumer can go with a node while the connection
    stays up: nothing fails, nothing arrives. The hub probes the events stream and, when it
    stays behind with nothing received, subscribes again; here the quiet check is off, so
    without the probe the follower would wait for ever."""
    monkeypatch.setattr("server._events_hub.QUIET_CHECK_S", 3600.0)
    caplog.set_level(logging.INFO, logger="server._events_hub")
    async with EventsHub(bus) as hub:
        task_id = new_task_id()
        watch = TaskWatch(task_id)
        inbox = hub.open(task_id)
        follower = asyncio.create_task(follow(hub, inbox, watch, fresh=True))
        await hub._sub.unsubscribe()  # what a lost consumer looks like from here: silence
        await publish(bus, accepted(task_id))
        await publish(bus, log(task_id, 2))
        await publish(bus, finished(task_id, 3))
        async with asyncio.timeout(30):
            result = await follower
        hub.close(inbox)
    assert result.seq == 3 and [e.seq for e in watch.events] == [1, 2, 3]
    assert "nothing reached the hub" in caplog.text
