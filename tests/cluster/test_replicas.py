"""TASKBUS_NATS_REPLICAS on a real 3-node cluster: everything taskbus creates has that many
replicas, existing R1 streams and buckets are raised by taskbus itself, and a count the
cluster cannot place is one clear error."""

from __future__ import annotations

import logging

import msgspec
import pytest
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType, StreamConfig

from bus import Bus, BusError, Subjects
from bus._catalog import Catalog
from bus._streams import kv_stream, object_stream
from server._idempotency import SubmitClaims

from .conftest import Cluster


def every_stream(subjects: Subjects) -> list[str]:
    return [
        subjects.jobs_stream,
        subjects.events_stream,
        subjects.audit_stream,
        object_stream(subjects.artifacts_bucket),
        kv_stream(subjects.cache_bucket),
        kv_stream(subjects.claims_bucket),
    ]


async def replicas_of(bus: Bus, stream: str) -> int:
    info = await bus.js.stream_info(stream)
    return info.config.num_replicas or 1


async def test_streams_kv_and_object_stores_are_created_with_three_replicas_placed_on_three_nodes(admin_bus: Bus) -> None:
    await admin_bus.ensure_streams()
    claims = SubmitClaims(admin_bus, ttl_s=3600)
    await claims._bucket()
    await Catalog.open(admin_bus.js, admin_bus.subjects.catalog_bucket, replicas=admin_bus.replicas)
    names = [
        *every_stream(admin_bus.subjects),
        kv_stream(claims.bucket),
        kv_stream(admin_bus.subjects.catalog_bucket),
        object_stream(admin_bus.subjects.catalog_bucket),
    ]
    for name in names:
        info = await admin_bus.js.stream_info(name)
        assert info.config.num_replicas == 3, name
        assert info.cluster is not None and info.cluster.leader, name
        assert len(info.cluster.replicas or []) == 2, f"{name}: a leader and two followers"


async def test_existing_r1_streams_and_buckets_are_raised_to_three_and_the_change_is_logged(
    admin_bus: Bus, caplog: pytest.LogCaptureFixture
) -> None:
    s = admin_bus.subjects
    js = admin_bus.js
    await js.add_stream(StreamConfig(name=s.events_stream, subjects=[s.events_all()], storage=StorageType.FILE))
    await js.create_key_value(KeyValueConfig(bucket=s.cache_bucket, storage=StorageType.FILE))
    await js.create_object_store(s.artifacts_bucket, config=ObjectStoreConfig(storage=StorageType.FILE))
    published = await admin_bus.publish(s.events("t_before"), b'{"kept": true}')
    for name in (s.events_stream, kv_stream(s.cache_bucket), object_stream(s.artifacts_bucket)):
        assert await replicas_of(admin_bus, name) == 1

    with caplog.at_level(logging.WARNING, logger="bus._streams"):
        await admin_bus.ensure_streams()
    for name in every_stream(s):
        assert await replicas_of(admin_bus, name) == 3, name
    raised = [r.getMessage() for r in caplog.records if "raised the replicas" in r.getMessage()]
    assert any(s.events_stream in m and "from 1 to 3" in m for m in raised), raised
    assert any(kv_stream(s.cache_bucket) in m for m in raised), raised
    assert any(object_stream(s.artifacts_bucket) in m for m in raised), raised
    stored = await js.get_msg(s.events_stream, published)
    assert stored.data == b'{"kept": true}', "raising the replicas keeps what the stream held"

    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="bus._streams"):
        await admin_bus.ensure_streams()
    assert not [r for r in caplog.records if "raised" in r.getMessage()], "a second start changes nothing"


async def test_a_lower_setting_never_lowers_the_replicas_of_an_existing_stream(cluster: Cluster) -> None:
    settings = cluster.settings("admin", prefix="t_lower")
    async with await Bus.for_settings(settings) as bus:
        await bus.ensure_streams()
    async with await Bus.for_settings(msgspec.structs.replace(settings, nats_replicas=1)) as bus:
        await bus.ensure_streams()
        for name in every_stream(bus.subjects):
            assert await replicas_of(bus, name) == 3, name


async def test_more_replicas_than_cluster_nodes_is_one_clear_error(cluster: Cluster) -> None:
    settings = cluster.settings("admin", prefix="t_five", nats_replicas=5)
    async with await Bus.for_settings(settings) as bus:
        with pytest.raises(BusError) as err:
            await bus.ensure_streams()
    message = str(err.value)
    assert "5 replicas" in message and "TASKBUS_NATS_REPLICAS" in message, message
    assert "\n" not in message


async def test_the_server_role_of_taskbus_up_creates_its_streams_with_replicas_on_the_cluster(cluster: Cluster) -> None:
    async with await Bus.for_settings(cluster.settings("server")) as bus:
        await bus.ensure_streams()
        for name in every_stream(bus.subjects):
            assert await replicas_of(bus, name) == 3, name
