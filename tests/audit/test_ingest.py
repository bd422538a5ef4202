"""The writer stores every event and notice once, in order, chained, from real JetStream."""

from __future__ import annotations

import asyncio
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
from audit_helpers import (
    RunningWriter,
    count_rows,
    every_event,
    publish_all,
    wait_rows,
    wait_until,
)

from audit import AuditOptions, open_db, verify
from bus import AuditNotice, Bus, ChainHead, Log, Settings, new_task_id


def rows(db: Path, sql: str = "SELECT task_id, seq, type, key_id FROM audit ORDER BY id", *args: object) -> list:
    conn = sqlite3.connect(db)
    try:
        return conn.execute(sql, args).fetchall()
    finally:
        conn.close()


async def test_every_event_type_of_a_task_lands_once_in_order_per_task(bus: Bus, writer: RunningWriter, db: Path):
    t1, t2 = new_task_id(), new_task_id()
    a, b = every_event(t1, key_id="tb_alice"), every_event(t2, key_id="tb_bob")
    for x, y in zip(a, b, strict=True):  # interleaved, as two runners would publish
        await publish_all(bus, [x, y])
    await wait_rows(db, 20)
    expected_types = ["accepted", "started", "message", "tool_call", "tool_result", "model_call", "security", "artifact", "log", "finished"]
    for task_id, key in ((t1, "tb_alice"), (t2, "tb_bob")):
        got = rows(db, "SELECT seq, type, key_id FROM audit WHERE task_id = ? ORDER BY id", task_id)
        assert [r[0] for r in got] == list(range(1, 11))
        assert [r[1] for r in got] == expected_types
        assert {r[2] for r in got} == {key}  # later events carry the key of the task's accepted event
    assert count_rows(db) == 20
    assert verify(open_db(db, readonly=True)).ok


async def test_audit_notices_are_stored_with_their_actor_as_key(bus: Bus, writer: RunningWriter, db: Path):
    notice = AuditNotice(kind="key_revoked", actor="cli:root", detail={"key_id": "tb_gone"})
    await bus.publish(bus.subjects.audit("key_revoked"), notice)
    await wait_rows(db, 1)
    assert rows(db, "SELECT stream, type, kind, key_id FROM audit") == [("audit", "notice", "key_revoked", "cli:root")]


async def test_malformed_payload_is_stored_as_malformed_and_ingest_continues(bus: Bus, writer: RunningWriter, db: Path):
    task_id = new_task_id()
    subject = bus.subjects.events(task_id)
    await bus.publish(subject, b"\xff\xfe not json at all")
    await bus.publish(subject, b'{"type": "message", "task_id": "' + task_id.encode() + b'"}')  # fields missing
    await bus.publish(subject, b'{"type": "teleport", "task_id": "x", "seq": 1, "ts": "2026-01-01T00:00:00Z"}')
    await bus.publish(bus.subjects.audit("denied"), b"[1, 2, 3]")
    await bus.publish(subject, Log(task_id=task_id, seq=1, ts=datetime.now(UTC), line="still here"))
    await wait_rows(db, 5)
    got = rows(db, "SELECT type, task_id, body FROM audit WHERE stream = 'events' ORDER BY id")
    assert [g[0] for g in got] == ["malformed", "malformed", "malformed", "log"]
    assert got[0][1] == task_id  # the task is taken from the subject
    bodies = [msgspec.json.decode(g[2]) for g in got[:3]]
    assert "not valid JSON" in bodies[0]["error"]
    assert "seq" in bodies[1]["error"]
    assert "teleport" in bodies[2]["raw"]
    (notice,) = rows(db, "SELECT type, body FROM audit WHERE stream = 'audit'")
    assert notice[0] == "malformed" and msgspec.json.decode(notice[1])["raw"] == "[1, 2, 3]"
    assert verify(open_db(db, readonly=True)).ok


async def test_writer_catches_up_after_downtime_without_storing_anything_twice(bus: Bus, settings: Settings, db: Path):
    first = RunningWriter(settings, db)
    await first.start()
    t1 = new_task_id()
    await publish_all(bus, every_event(t1))
    await wait_rows(db, 10)
    await first.close()

    t2 = new_task_id()
    await publish_all(bus, every_event(t2))  # published while no writer runs
    second = RunningWriter(settings, db)
    await second.start()
    try:
        await wait_rows(db, 20)
    finally:
        await second.close()
    got = rows(db, "SELECT stream, stream_seq FROM audit ORDER BY id")
    assert [seq for _, seq in got] == list(range(1, 21))
    assert verify(open_db(db, readonly=True)).ok


async def test_redelivered_messages_are_skipped_and_do_not_fork_the_chain(settings: Settings, db: Path):
    from audit import Writer

    conn = open_db(db)
    try:
        w = Writer(conn)
        payload = msgspec.json.encode(every_event(new_task_id())[0])
        first = w.write_batch([("events", 1, "x.events.t", payload), ("events", 2, "x.events.t", payload)])
        again = w.write_batch([("events", 1, "x.events.t", payload), ("events", 2, "x.events.t", payload)])
        assert (first.stored, first.duplicates) == (2, 0)
        assert (again.stored, again.duplicates) == (0, 2)
        reopened = Writer(conn)  # a restarted writer knows what it stored
        assert reopened.write_batch([("events", 2, "x.events.t", payload)]).duplicates == 1
        assert verify(conn).ok
    finally:
        conn.close()


async def test_chain_head_is_published_with_the_last_row_and_hash(bus: Bus, settings: Settings, db: Path):
    heads: asyncio.Queue[ChainHead] = asyncio.Queue()

    async def on_head(msg) -> None:
        heads.put_nowait(msgspec.json.decode(msg.data, type=ChainHead))

    sub = await bus.nc.subscribe(bus.subjects.audit_head(), cb=on_head)
    await publish_all(bus, every_event(new_task_id()))
    w = RunningWriter(settings, db)
    await w.start()
    try:
        async with asyncio.timeout(20):
            while True:
                head = await heads.get()
                if head.row == 10:
                    break
        assert head.hash == rows(db, "SELECT hash FROM audit WHERE id = 10")[0][0].hex()
    finally:
        await w.close()
        await sub.unsubscribe()


async def test_stream_sequence_is_read_from_the_ack_subject_like_nats_metadata(bus: Bus):
    from audit._pull import stream_seq

    task_id = new_task_id()
    for ev in every_event(task_id)[:3]:
        await bus.publish(bus.subjects.events(task_id), ev)
    psub = await bus.js.pull_subscribe(bus.subjects.events(task_id), stream=bus.subjects.events_stream)
    try:
        msgs = await psub.fetch(3, timeout=5)
        assert [stream_seq(m) for m in msgs] == [m.metadata.sequence.stream for m in msgs] == [1, 2, 3]
    finally:
        await psub.unsubscribe()


async def test_stored_batches_are_acked_so_the_consumer_has_nothing_pending(bus: Bus, writer: RunningWriter, db: Path):
    from audit._subscriber import EVENTS_CONSUMER

    await publish_all(bus, every_event(new_task_id()))
    await wait_rows(db, 10)
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        info = await bus.js.consumer_info(bus.subjects.events_stream, EVENTS_CONSUMER)
        if info.num_ack_pending == 0 and info.ack_floor.stream_seq == 10:
            break
        assert asyncio.get_running_loop().time() < deadline, f"still pending: {info.num_ack_pending}"
        await asyncio.sleep(0.05)


async def test_a_second_writer_on_the_same_database_is_refused(writer: RunningWriter, settings: Settings, db: Path):
    from audit import AuditError

    second = RunningWriter(settings, db)
    try:
        await second.start()
    except AuditError as exc:
        assert "another `taskbus audit run`" in str(exc)
    else:
        await second.close()
        raise AssertionError("two writers ran on one audit database")


async def test_writer_recovers_when_its_consumer_is_deleted_under_it(bus: Bus, writer: RunningWriter, db: Path):
    from audit._subscriber import EVENTS_CONSUMER

    first, second = new_task_id(), new_task_id()
    await publish_all(bus, every_event(first))
    await wait_rows(db, 10)
    await bus.js.delete_consumer(bus.subjects.events_stream, EVENTS_CONSUMER)  # an operator's mistake
    await publish_all(bus, every_event(second))
    await wait_rows(db, 20)
    got = rows(db, "SELECT stream_seq FROM audit ORDER BY id")
    assert [r[0] for r in got] == list(range(1, 21))
    assert verify(open_db(db, readonly=True)).ok


async def test_writer_survives_a_nats_restart_without_losing_or_repeating_events(tmp_path: Path, settings: Settings, db: Path):
    from bus import EmbeddedNats, Subjects

    server = EmbeddedNats(tmp_path / "own-nats")
    await asyncio.to_thread(server.start)
    own = msgspec.structs.replace(settings, nats_url=server.url)
    try:
        async with await Bus.open(server.url, Subjects(settings.subject_prefix), name="pytest-own") as own_bus:
            await own_bus.ensure_streams()
            w = await RunningWriter(own, db).start()
            try:
                await publish_all(own_bus, every_event(new_task_id()))
                await wait_rows(db, 10)
                await asyncio.to_thread(server.stop)  # JetStream state stays in its store dir
                await asyncio.to_thread(server.start)
                await publish_all(own_bus, every_event(new_task_id()))  # publish retries until reconnected
                await wait_rows(db, 20)
            finally:
                await w.close()
    finally:
        await asyncio.to_thread(server.stop)
    assert [r[0] for r in rows(db, "SELECT stream_seq FROM audit ORDER BY id")] == list(range(1, 21))
    assert verify(open_db(db, readonly=True)).ok


async def test_writer_waits_out_a_database_lock_held_by_another_process(bus: Bus, settings: Settings, db: Path, caplog):
    import logging

    w = await RunningWriter(settings, db, AuditOptions(busy_timeout_s=0.2)).start()
    blocker = sqlite3.connect(db, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")  # as a long prune would
        with caplog.at_level(logging.WARNING, logger="audit._subscriber"):
            await publish_all(bus, every_event(new_task_id()))
            await wait_until(lambda: "audit database is busy" in caplog.text, what="the writer to back off")
        blocker.execute("COMMIT")
        await wait_rows(db, 10)
    finally:
        blocker.close()
        await w.close()
    assert verify(open_db(db, readonly=True)).ok


async def test_two_named_audit_writers_each_keep_a_full_copy_of_the_log(settings: Settings, bus: Bus, tmp_path: Path):
    """Writers with different names (another host, another database) get every message each;
    a second writer under the default name would instead take messages away from the first."""
    writers = [
        RunningWriter(
            msgspec.structs.replace(settings, audit_writer_name=name),
            tmp_path / f"{name}.db",
            AuditOptions(fetch_wait_s=0.2, head_interval_s=1.0),
        )
        for name in ("host-a", "host-b")
    ]
    heads: list[ChainHead] = []

    async def on_head(msg: Any) -> None:
        heads.append(msgspec.json.decode(msg.data, type=ChainHead))

    sub = await bus.nc.subscribe(bus.subjects.audit_head(), cb=on_head)
    for w in writers:
        await w.start()
    try:
        tasks = [new_task_id() for _ in range(5)]
        for task_id in tasks:
            await publish_all(bus, every_event(task_id))
        await bus.publish(bus.subjects.audit("key_revoked"), AuditNotice(kind="key_revoked", actor="cli:root", detail={}))
        for w in writers:
            await wait_rows(w.db, 51)
        for w in writers:
            assert count_rows(w.db) == 51
            assert {r[0] for r in rows(w.db, "SELECT task_id FROM audit WHERE stream = 'events'")} == set(tasks)
            assert verify(open_db(w.db, readonly=True)).ok
        for w, name in zip(writers, ("host-a", "host-b"), strict=True):  # each copy's chain head says whose it is
            head_hash = rows(w.db, "SELECT hash FROM audit WHERE id = 51")[0][0].hex()
            await wait_until(
                lambda n=name, h=head_hash: any(x.writer == n and x.row == 51 and x.hash == h for x in heads), what=f"{name}'s head"
            )
    finally:
        await sub.unsubscribe()
        for w in writers:
            await w.close()
    names = {c.name for c in await bus.js.consumers_info(bus.subjects.events_stream)}
    assert {"audit-events-host-a", "audit-events-host-b"} <= names
