"""Control-plane writes wait out a bucket that has no leader instead of failing.

CI found 141 of 200 ``complete`` calls refused with ``bus_error (NoStreamResponseError)`` on a
loaded machine after one NATS node of three was killed: every admission writes the ledger
bucket, and while that bucket's stream elected a new leader the write reached no one. A
JetStream publish already retried for ``CLUSTER_PUBLISH_PATIENCE_S``; the KV writes did not.
Here the window is made long on purpose: two nodes of three are down, so no bucket can have a
leader until one comes back.
"""

from __future__ import annotations

import asyncio

from bus import Bus, KeyRevoked
from profiles import Store

from .conftest import Cluster


async def test_a_key_created_while_the_cluster_has_no_quorum_lands_once_a_node_returns(cluster: Cluster) -> None:
    settings = cluster.settings("server")
    async with await Bus.for_settings(settings, name="pytest-store") as bus, Store.for_settings(settings, bus=bus) as store:
        await store.create_key("developer", name="before")  # the buckets exist and have leaders
        await asyncio.to_thread(cluster.kill, 1)
        await asyncio.to_thread(cluster.kill, 2)
        try:
            pending = asyncio.create_task(store.create_key("developer", name="during"))
            await asyncio.sleep(3)  # the outage itself: no leader anywhere meanwhile
            assert not pending.done(), f"the write gave up while no leader could exist: {pending.exception()!r}"
        finally:
            await asyncio.to_thread(cluster.restart, 1)
        key, record = await asyncio.wait_for(pending, 60)
        assert record.name == "during"
        assert (await store.authenticate(key)).prefix == record.prefix
        assert "during" in [k.name for k in await store.list_keys()]
    await asyncio.to_thread(cluster.restart, 2)


async def test_a_key_revoked_after_the_cluster_lost_quorum_is_refused_by_another_server(cluster: Cluster) -> None:
    """The other server's view follows the bucket with a watcher whose consumer may have gone
    with the lost nodes; nats-py notices that late (two missed 5 s heartbeats, one retry per
    10 s). The view's own probe of the bucket's last sequence loads it again."""
    settings = cluster.settings("server")
    async with (
        await Bus.for_settings(settings, name="pytest-a") as bus_a,
        Store.for_settings(settings, bus=bus_a) as a,
        await Bus.for_settings(settings, name="pytest-b") as bus_b,
        Store.for_settings(settings, bus=bus_b) as b,
    ):
        key, record = await a.create_key("developer", name="soon revoked")
        assert (await b.authenticate(key)).prefix == record.prefix
        for node in (1, 2):
            await asyncio.to_thread(cluster.kill, node)
        await asyncio.sleep(2)  # the outage itself
        for node in (1, 2):
            await asyncio.to_thread(cluster.restart, node)
        await a.revoke(record.prefix)
        loop = asyncio.get_running_loop()
        revoked_at, refused_after = loop.time(), None
        while loop.time() - revoked_at < 30:
            try:
                await b.authenticate(key)
            except KeyRevoked:
                refused_after = loop.time() - revoked_at
                break
            await asyncio.sleep(0.2)
        assert refused_after is not None, "the other server still accepted the revoked key 30 s later"
