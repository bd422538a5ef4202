"""The embedded nats-server starts, serves, stops and leaves nothing behind."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bus import Bus, EmbeddedNats, EmbeddedServerError


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie is not alive for our purposes
    stat = Path(f"/proc/{pid}/stat")
    return stat.exists() and stat.read_text().split()[2] != "Z"


async def test_embedded_server_starts_accepts_a_connection_and_stops_without_leftovers(tmp_path: Path) -> None:
    async with EmbeddedNats(tmp_path / "js") as server:
        pid = server.pid
        assert pid and _alive(pid)
        b = await Bus.open(server.url)
        await b.ensure_streams()
        seq = await b.publish(b.subjects.events("t_x"), b"{}")
        assert seq == 1
        await b.close()
    assert not _alive(pid)
    assert (tmp_path / "js" / "jetstream").is_dir(), "JetStream data lives in the given folder"


async def test_jetstream_data_survives_a_restart_on_the_same_folder(tmp_path: Path) -> None:
    store = tmp_path / "js"
    async with EmbeddedNats(store) as server:
        b = await Bus.open(server.url)
        await b.ensure_streams()
        await b.publish(b.subjects.events("t_keep"), b'{"kept":true}')
        await b.close()
    async with EmbeddedNats(store) as server:
        b = await Bus.open(server.url)
        msg = await b.js.get_last_msg(b.subjects.events_stream, b.subjects.events("t_keep"))
        assert msg.data == b'{"kept":true}'
        await b.close()


def test_stop_is_safe_twice_and_kill_leaves_no_process(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "js")
    server.start()
    pid = server.pid
    server.kill()
    server.stop()
    server.stop()
    assert pid and not _alive(pid)


def test_a_port_in_use_gives_a_clear_error(tmp_path: Path) -> None:
    with EmbeddedNats(tmp_path / "a") as first:
        second = EmbeddedNats(tmp_path / "b", port=first.port, start_timeout=5)
        with pytest.raises(EmbeddedServerError, match="nats-server"):
            second.start()
        assert second.process is None
