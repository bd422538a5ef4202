"""A server's watched view of the control plane survives a NATS restart: changes made
after the restart (through another server) reach it, so a tightened policy or a deleted
profile is not ignored by a server whose watcher's consumer died with the old connection.
(Before the view loaded again on reconnect, such a change took about 19 s to arrive.)"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from bus import Bus, EmbeddedNats, KeyRevoked, Settings
from profiles import Store, profile_from_mapping

DEADLINE_S = 60.0


async def test_changes_after_a_nats_restart_reach_every_view(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="profiles._view")
    server = EmbeddedNats(tmp_path / "js", name="view-recovery")
    server.start()
    try:
        settings = Settings.load({}, data_dir=str(tmp_path / "data"), nats_url=server.url, subject_prefix="vr")
        async with Store.for_settings(settings, actor="server-a") as watcher:
            await watcher.create_profile(profile_from_mapping("temp", {"models": ["claude-haiku-4-5"]}))
            assert (await watcher.get_profile("developer")).max_concurrent != 7
            server.stop()
            await asyncio.sleep(1.0)  # the outage
            server.start()  # same address and store
            async with Store.for_settings(settings, actor="server-b") as other:
                await other.update_profile("developer", max_concurrent=7)
                await other.delete_profile("temp")
            async with asyncio.timeout(DEADLINE_S):
                while watcher.view.profiles["developer"].max_concurrent != 7 or "temp" in watcher.view.profiles:
                    await asyncio.sleep(0.05)
            assert (await watcher.get_profile("developer")).max_concurrent == 7
            assert "control view: loaded again (the connection reconnected)" in caplog.text
    finally:
        server.stop()


async def test_a_revocation_reaches_a_server_whose_watcher_went_deaf(bus: Bus) -> None:
    """The view's watcher can go deaf without an error (its server-side consumer lived on a
    cluster node that died); the view probes the bucket's last sequence and loads again."""
    async with Store(bus, actor="server-a") as store, Store(bus, actor="server-b") as other:
        key, record = await other.create_key("developer", name="revoked while deaf")
        await store.view.wait_for(lambda: record.prefix in store.view.keys, "the new key")
        assert (await store.authenticate(key)).prefix == record.prefix
        await store.view._watcher._sub.unsubscribe()  # what a lost consumer looks like from here: silence
        await other.revoke(record.prefix)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 30
        while True:
            try:
                await store.authenticate(key)
            except KeyRevoked:
                break
            assert loop.time() < deadline, "the server with the deaf watcher still accepts a key revoked 30 s ago"
            await asyncio.sleep(0.2)
