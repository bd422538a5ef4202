"""The task registry as history grows (issue 17, "flat as history grows"): records expire
after the retention and ``get_task`` says so; a listing reads only the newest part of the
key index, however many tasks the registry holds."""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime, timedelta

import msgspec
import pytest

from bus import Bus, NotFound, Settings, ensure_control_plane, new_task_id
from bus._streams import kv_stream
from profiles import Store
from server._service import run_server

DAY = 86_400


async def max_age(bus: Bus, bucket: str) -> float:
    return float((await bus.js.stream_info(kv_stream(bucket))).config.max_age or 0.0)


async def test_the_registry_and_ledger_buckets_get_the_retention_and_a_change_reaches_existing_buckets(store: Store, bus: Bus):
    s = bus.subjects
    assert await max_age(bus, s.tasks_bucket) == 30 * DAY  # the default
    assert await max_age(bus, s.ledger_bucket) == 32 * DAY  # at least a budget month
    assert await max_age(bus, s.control_bucket) == 0  # keys and profiles never expire

    await ensure_control_plane(bus.js, s, task_retention_s=90 * DAY)
    assert await max_age(bus, s.tasks_bucket) == 90 * DAY
    assert await max_age(bus, s.ledger_bucket) == 90 * DAY
    assert await max_age(bus, s.control_bucket) == 0
    await ensure_control_plane(bus.js, s)  # a caller that does not know the setting leaves it
    assert await max_age(bus, s.tasks_bucket) == 90 * DAY

    with pytest.raises(ValueError, match="positive"):
        await ensure_control_plane(bus.js, s, task_retention_s=0)


async def test_taskbus_serve_applies_the_retention_setting_to_the_buckets(settings: Settings, bus: Bus):
    """The deployment's TASKBUS_TASK_RETENTION_DAYS reaches buckets made before, at the server's start."""
    async with Store.for_settings(settings):  # buckets made with the default, as by an older taskbus
        pass
    assert await max_age(bus, bus.subjects.tasks_bucket) == 30 * DAY
    ready, stop = asyncio.Event(), asyncio.Event()
    configured = msgspec.structs.replace(settings, task_retention_days=2.5)
    server = asyncio.create_task(run_server(configured, transport="http", host="127.0.0.1", port=0, ready=ready, stop=stop))
    try:
        async with asyncio.timeout(60):
            await asyncio.wait({server, asyncio.create_task(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if server.done():
            server.result()
        assert await max_age(bus, bus.subjects.tasks_bucket) == 2.5 * DAY
        assert await max_age(bus, bus.subjects.ledger_bucket) == 32 * DAY
    finally:
        stop.set()
        async with asyncio.timeout(60):
            await server


async def test_an_expired_task_says_so_and_an_unknown_one_does_not(bus: Bus, clock):
    await ensure_control_plane(bus.js, bus.subjects, task_retention_s=1.0)  # before the Store: it reads the age once
    async with Store(bus, now=clock) as store:
        task_id = new_task_id()
        clock.current = datetime.now(UTC)
        await store.record_task(task_id=task_id, key_id="tb_Expire01", profile="p", kind="complete", reserved=0.01)
        assert (await store.get_task(task_id)).status == "accepted"

        deadline = time.monotonic() + 60
        while True:  # JetStream drops it about a second after its last write
            try:
                await store.get_task(task_id)
            except NotFound as exc:
                expired = exc
                break
            assert time.monotonic() < deadline, "the record did not expire within 60 s of a 1 s retention"
            await asyncio.sleep(0.2)
        assert getattr(expired, "expired", False) is True
        assert f"task {task_id} has expired" in str(expired)
        assert "TASKBUS_TASK_RETENTION_DAYS" in str(expired)
        assert await store.list_tasks("tb_Expire01") == []  # its index entries went with it

        with pytest.raises(NotFound) as unknown:  # a fresh id that was never recorded: just unknown
            await store.get_task(new_task_id())
        assert "expired" not in str(unknown.value)
        with pytest.raises(NotFound) as custom:  # an id of another form carries no time
            await store.get_task("t_not-a-generated-id")
        assert "expired" not in str(custom.value)


async def test_an_old_id_that_never_existed_reads_as_expired_only_past_the_retention(store: Store):
    old = datetime.now(UTC) - timedelta(days=31)
    value = (int(old.timestamp() * 1000) << 80) | 12345
    alphabet = "0123456789abcdefghjkmnpqrstvwxyz"  # bus.new_task_id's
    old_id = "t_" + "".join(alphabet[(value >> (5 * i)) & 31] for i in reversed(range(26)))
    with pytest.raises(NotFound, match="has expired: its id dates from"):
        await store.get_task(old_id)


async def test_a_listing_reads_only_the_newest_part_of_the_index_however_large(store: Store, bus: Bus, clock):
    """2,000 tasks: 1,900 of one key, 100 of another admitted among the first; a listing of
    5 pulls a few hundred messages from NATS at most (the whole index is 2,000 entries plus
    the records), and returns the right tasks newest first."""
    busy, sparse = "tb_Busy0001", "tb_Sparse01"
    assert await store.list_tasks(None) == [] and await store.list_tasks(busy) == []  # an empty bucket
    order: dict[str, list[str]] = {busy: [], sparse: []}
    for batch in range(20):
        ids = []
        for i in range(100):
            key = sparse if batch < 5 and i % 5 == 0 else busy
            task_id = f"t_{batch:02d}{i:03d}"
            order[key].append(task_id)
            ids.append((task_id, key))
        clock.advance(1)
        await asyncio.gather(*(store.record_task(task_id=t, key_id=k, profile="p", kind="complete", reserved=0.0) for t, k in ids))
    for task_id in order[busy][-3:]:
        await store.update_task(task_id, "succeeded")
    newest_all = sorted(order[busy] + order[sparse], reverse=True)

    async def listed(key_id: str | None, *, status: str | None = None, limit: int = 50) -> tuple[list[str], int]:
        before = bus.nc.stats["in_msgs"]
        records = await store.list_tasks(key_id, status=status, limit=limit)
        return [r.task_id for r in records], bus.nc.stats["in_msgs"] - before

    ids, messages = await listed(busy, limit=5)
    assert ids == sorted(order[busy], reverse=True)[:5]
    assert messages < 400, f"a listing of 5 pulled {messages} messages: it read the whole index"
    ids, messages = await listed(None, limit=5)
    assert ids == newest_all[:5]
    assert messages < 400, f"a listing of 5 pulled {messages} messages: it read the whole index"
    ids, _ = await listed(busy, status="succeeded", limit=10)
    assert ids == sorted(order[busy][-3:], reverse=True)  # the status is the record's, not the index's
    ids, _ = await listed(sparse, limit=1000)  # a key whose tasks are all far back: every one, in order
    assert ids == sorted(order[sparse], reverse=True)
    ids, _ = await listed(None, status="accepted", limit=3)  # the live index
    assert ids == [t for t in newest_all if t not in order[busy][-3:]][:3]
    assert len(await store.list_tasks(None, limit=5000)) == 2000
