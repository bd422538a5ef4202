"""The embedded nats-server starts, serves, stops and leaves nothing behind."""

from __future__ import annotations

import os
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bus import Bus, EmbeddedCluster, EmbeddedNats, EmbeddedServerError


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


_PARENT = """
import sys, threading
from bus import EmbeddedNats
server = EmbeddedNats(sys.argv[1])
starter = threading.Thread(target=server.start)  # a thread that ends once the server runs
starter.start()
starter.join()
print(server.pid, server.port, flush=True)
sys.stdin.read()
"""


def _read_line(proc: subprocess.Popen[str], timeout: float) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    assert ready, f"the parent printed nothing within {timeout}s"
    return proc.stdout.readline()


def test_a_sigkilled_parent_takes_its_nats_server_with_it(tmp_path: Path) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tmp_path / "js")], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    nats_pid = 0
    try:
        nats_pid, port = map(int, _read_line(parent, 60).split())
        assert _alive(nats_pid)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:  # outlived the thread that started it
            assert conn.recv(4096).startswith(b"INFO ")
        parent.kill()  # SIGKILL: no chance to stop anything
        parent.wait(timeout=30)
        deadline = time.monotonic() + 30
        while _alive(nats_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(nats_pid), "the nats-server outlived the process that started it"
    finally:
        parent.kill()
        parent.wait(timeout=30)
        if nats_pid and _alive(nats_pid):
            os.kill(nats_pid, signal.SIGKILL)


def _occupy(port: int) -> socket.socket:
    """Another process's listener on ``port`` (what a loaded machine does between pick and bind)."""
    holder = socket.socket()
    holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    holder.bind(("127.0.0.1", port))
    holder.listen()
    return holder


async def test_a_picked_port_taken_before_the_server_binds_it_is_replaced_by_a_fresh_one(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "js")
    picked = server.port
    with _occupy(picked):
        async with server:
            assert server.port != picked
            b = await Bus.open(server.url)
            await b.close()
    assert "address already in use" in (tmp_path / "js" / "nats-server.log").read_text()


def test_a_restart_keeps_its_port_and_says_when_it_is_taken(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "js", start_timeout=5)
    server.start()
    port = server.port
    server.stop()
    with _occupy(port), pytest.raises(EmbeddedServerError, match="address already in use"):
        server.start()  # clients know this port: a restart never moves
    assert server.port == port and server.process is None


async def test_a_cluster_whose_picked_ports_were_taken_starts_on_fresh_ones(tmp_path: Path) -> None:
    cluster = EmbeddedCluster(tmp_path / "nats", size=3)
    node = cluster.nodes[1]
    assert node.cluster is not None
    taken = [int(node.cluster.listen.rsplit(":", 1)[1]), cluster.nodes[2].monitor_port]
    with _occupy(taken[0]), _occupy(taken[1]):
        async with cluster:
            ports = {n.port for n in cluster.nodes} | {n.monitor_port for n in cluster.nodes}
            assert not ports & set(taken)
            assert all(cluster.healthy(i) for i in range(3))
            b = await Bus.open(cluster.url, replicas=3)
            await b.ensure_streams()
            assert await b.publish(b.subjects.events("t_x"), b"{}") == 1
            await b.close()
