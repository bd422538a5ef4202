"""NATS over TLS with a private CA: a real nats-server with a `tls {}` block and certificates
made here (a CA, the server's, a client's, and a stranger CA nobody trusts).

What an operator and an attacker observe: a Bus connects over tls:// with the CA and
JetStream works; without the CA (or with the wrong one) it fails with one line naming the
setting; a server requiring client certificates refuses a client without one; a TLS-only
server refuses a plaintext client; and a process told to use TLS sends nothing (no
credentials) to a server that does not ask for TLS."""

from __future__ import annotations

import asyncio
import json
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nats.js.errors import APIError
from tls_kit import Pki, make_pki, tls_block
from typer.testing import CliRunner

from bus import Bus, BusError, ConfigError, EmbeddedNats, Settings, free_port
from bus._tls import tls_context
from cli import app

WAIT_S = 30


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki") / "certs")


def _server(folder: Path, pki: Pki, *, verify: bool, cert: Path | None = None) -> Iterator[EmbeddedNats]:
    yield from _server_with(folder, tls_block(pki, verify=verify, cert=cert))


def _server_with(folder: Path, blocks: str) -> Iterator[EmbeddedNats]:
    # write_config appends ``authorization`` verbatim after the rest of the config: the
    # only way to give EmbeddedNats a `tls {}` block (bus/_embedded.py is not changed here)
    server = EmbeddedNats(folder, authorization=blocks)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def tls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[EmbeddedNats]:
    yield from _server(tmp_path_factory.mktemp("tls-nats"), pki, verify=False)


@pytest.fixture(scope="module")
def mtls_server(tmp_path_factory: pytest.TempPathFactory, pki: Pki) -> Iterator[EmbeddedNats]:
    yield from _server(tmp_path_factory.mktemp("mtls-nats"), pki, verify=True)


def tls_url(server: EmbeddedNats, userinfo: str = "") -> str:
    return f"tls://{userinfo}{server.host}:{server.port}"


def settings_for(tmp_path: Path, url: str, **tls: str) -> Settings:
    return Settings.load(
        {},
        data_dir=str(tmp_path / "data"),
        nats_url=url,
        subject_prefix="t" + uuid.uuid4().hex[:10],
        job_secret="test-secret-" + uuid.uuid4().hex,
        artifacts_store_max_bytes=16 * 1024 * 1024,
        **tls,
    )


async def _roundtrip(bus: Bus) -> None:
    """Publish one JetStream message and read it back from the stream."""
    await bus.ensure_streams()
    task = uuid.uuid4().hex
    payload = b'{"over": "tls"}'
    seq = await bus.publish(bus.subjects.events(task), payload)
    stored = await bus.js.get_msg(bus.subjects.events_stream, seq)
    assert stored.data == payload


def _peer_cert_subject(bus: Bus) -> str:
    """The subject of the certificate the server presented on this connection."""
    transport = bus.nc._transport
    assert transport is not None
    ssl_object = transport._io_writer.get_extra_info("ssl_object")  # type: ignore[attr-defined]  # nats-py keeps its asyncio writer private
    assert ssl_object is not None, "the connection is not TLS"
    return str(dict(x[0] for x in ssl_object.getpeercert()["subject"]))


async def test_a_bus_with_the_private_ca_uses_jetstream_over_tls(tmp_path: Path, pki: Pki, tls_server: EmbeddedNats) -> None:
    settings = settings_for(tmp_path, tls_url(tls_server), nats_tls_ca=str(pki.ca))
    async with await Bus.for_settings(settings, name="tls-test") as bus:
        assert "nats-1" in _peer_cert_subject(bus)
        await _roundtrip(bus)


async def test_a_nats_url_with_the_ca_is_upgraded_to_tls(tmp_path: Path, pki: Pki, tls_server: EmbeddedNats) -> None:
    """The server's INFO asks for TLS: a nats:// URL with the CA set gets a verified TLS connection."""
    settings = settings_for(tmp_path, tls_server.url, nats_tls_ca=str(pki.ca))
    async with await Bus.for_settings(settings, name="tls-test") as bus:
        assert "nats-1" in _peer_cert_subject(bus)
        await _roundtrip(bus)


@pytest.mark.parametrize("ca", ["system store", "stranger"])
async def test_a_certificate_that_does_not_verify_is_one_clear_line(tmp_path: Path, pki: Pki, tls_server: EmbeddedNats, ca: str) -> None:
    extra = {"nats_tls_ca": str(pki.stranger_ca)} if ca == "stranger" else {}
    settings = settings_for(tmp_path, tls_url(tls_server, "operator:s3cret-pw@"), **extra)
    async with asyncio.timeout(WAIT_S):
        with pytest.raises(BusError) as caught:
            await Bus.for_settings(settings, name="tls-test", open_timeout=WAIT_S)
    message = str(caught.value)
    assert "\n" not in message
    assert f"tls://operator:***@127.0.0.1:{tls_server.port}" in message
    assert "s3cret-pw" not in message
    assert "certificate does not verify" in message and "TASKBUS_NATS_TLS_CA" in message


async def test_a_certificate_for_another_host_is_refused(tmp_path: Path, pki: Pki) -> None:
    """The CA signed it, but for nats-1, and the URL says 127.0.0.1: the host name is checked."""
    for server in _server(tmp_path / "misnamed-nats", pki, verify=False, cert=pki.misnamed_cert):
        settings = settings_for(tmp_path, tls_url(server), nats_tls_ca=str(pki.ca))
        async with asyncio.timeout(WAIT_S):
            with pytest.raises(BusError) as caught:
                await Bus.for_settings(settings, name="tls-test", open_timeout=WAIT_S)
        assert "certificate does not verify" in str(caught.value) and "127.0.0.1" in str(caught.value)


async def test_mutual_tls_refuses_a_client_without_a_certificate(tmp_path: Path, pki: Pki, mtls_server: EmbeddedNats) -> None:
    without = settings_for(tmp_path, tls_url(mtls_server), nats_tls_ca=str(pki.ca))
    async with asyncio.timeout(WAIT_S):
        with pytest.raises(BusError) as caught:
            await Bus.for_settings(without, name="tls-test", open_timeout=WAIT_S)
    message = str(caught.value)
    assert "\n" not in message
    assert "TASKBUS_NATS_TLS_CERT" in message and f"127.0.0.1:{mtls_server.port}" in message

    with_cert = settings_for(
        tmp_path, tls_url(mtls_server), nats_tls_ca=str(pki.ca), nats_tls_cert=str(pki.client_cert), nats_tls_key=str(pki.client_key)
    )
    async with await Bus.for_settings(with_cert, name="tls-test") as bus:
        await _roundtrip(bus)


async def _speak_plaintext(host: str, port: int) -> bytes:
    """Connect, say CONNECT and PING in plaintext, and return all the port answers until it
    closes the connection."""
    answer = b""
    async with asyncio.timeout(WAIT_S):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
            await writer.drain()
            while chunk := await reader.read(4096):
                answer += chunk
        finally:
            writer.close()
    return answer


async def test_verify_and_map_lets_in_only_the_certificate_of_a_user(tmp_path: Path, pki: Pki) -> None:
    """`verify_and_map`: the client certificate is the identity, its subject the NATS user."""
    block = tls_block(pki, verify=True).replace("verify: true", "verify_and_map: true")
    users = 'authorization {\n  users = [ { user: "CN=taskbus-runner" } ]\n}\n'
    for server in _server_with(tmp_path / "mapped-nats", block + users):
        url = tls_url(server)
        mapped = settings_for(tmp_path, url, nats_tls_ca=str(pki.ca), nats_tls_cert=str(pki.client_cert), nats_tls_key=str(pki.client_key))
        async with await Bus.for_settings(mapped, name="tls-test") as bus:
            await _roundtrip(bus)
        stranger = settings_for(
            tmp_path, url, nats_tls_ca=str(pki.ca), nats_tls_cert=str(pki.unmapped_cert), nats_tls_key=str(pki.client_key)
        )
        with pytest.raises(BusError) as caught:
            await Bus.for_settings(stranger, name="tls-test", open_timeout=5)
        assert "authorization failed" in str(caught.value) and "TASKBUS_NATS_TLS_CERT" in str(caught.value)


async def test_a_tls_only_server_refuses_a_plaintext_client(tls_server: EmbeddedNats) -> None:
    """A client that never starts TLS (a raw socket speaking the NATS protocol) is told TLS
    is required and gets no PONG."""
    answer = await _speak_plaintext(tls_server.host, tls_server.port)
    info, _, rest = answer.partition(b"\r\n")
    assert json.loads(info.removeprefix(b"INFO ")).get("tls_required") is True
    assert b"PONG" not in rest


async def test_tls_settings_send_nothing_to_a_server_that_does_not_ask_for_tls(tmp_path: Path, pki: Pki) -> None:
    """A server (or a man in the middle) whose INFO does not require TLS gets no CONNECT and
    so no password: nats-py alone would send both in plaintext."""
    received = bytearray()
    connected = asyncio.Event()

    async def plaintext_server(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        writer.write(b'INFO {"server_id":"mitm","version":"2.10.0","max_payload":1048576,"auth_required":true}\r\n')
        await writer.drain()
        try:
            async with asyncio.timeout(5):
                while chunk := await reader.read(4096):
                    received.extend(chunk)
        except TimeoutError:
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(plaintext_server, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        settings = settings_for(tmp_path, f"nats://operator:s3cret-pw@127.0.0.1:{port}", nats_tls_ca=str(pki.ca))
        with pytest.raises(BusError) as caught:  # at once; without the check, after open_timeout
            await Bus.for_settings(settings, name="tls-test", open_timeout=5)
    finally:
        server.close()
        await server.wait_closed()
    assert connected.is_set()
    assert b"CONNECT" not in received and b"s3cret-pw" not in received
    assert "does not require TLS" in str(caught.value) and "s3cret-pw" not in str(caught.value)


async def test_tls_files_are_checked_at_start(tmp_path: Path, pki: Pki, tls_server: EmbeddedNats) -> None:
    url = tls_url(tls_server)
    missing = settings_for(tmp_path, url, nats_tls_ca=str(tmp_path / "no-such-ca.pem"))
    with pytest.raises(ConfigError, match=r"TASKBUS_NATS_TLS_CA.*no-such-ca\.pem"):
        await Bus.for_settings(missing)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    with pytest.raises(ConfigError, match="TASKBUS_NATS_TLS_CA"):
        await Bus.for_settings(settings_for(tmp_path, url, nats_tls_ca=str(garbage)))
    with pytest.raises(ConfigError, match=r"TASKBUS_NATS_TLS_KEY.*needs both"):
        await Bus.for_settings(settings_for(tmp_path, url, nats_tls_ca=str(pki.ca), nats_tls_cert=str(pki.client_cert)))
    with pytest.raises(ConfigError, match="TASKBUS_NATS_TLS_CERT"):
        await Bus.for_settings(
            settings_for(tmp_path, url, nats_tls_ca=str(pki.ca), nats_tls_cert=str(pki.client_cert), nats_tls_key=str(pki.server_key))
        )


def doctor(tmp_path: Path, url: str, **env: str) -> dict[str, dict[str, Any]]:
    """``taskbus doctor --json`` with these TASKBUS_* variables; its checks by name."""
    result = CliRunner().invoke(
        app,
        ["doctor", "--json"],
        env={"TASKBUS_DATA_DIR": str(tmp_path / "data"), "TASKBUS_NATS_URL": url, "TASKBUS_SUBJECT_PREFIX": "tlsdoc", **env},
    )
    assert result.exit_code in (0, 1), result.output
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def test_doctor_reports_tls_with_the_ca_in_use(tmp_path: Path, pki: Pki, tls_server: EmbeddedNats) -> None:
    checks = doctor(tmp_path, tls_url(tls_server), TASKBUS_NATS_TLS_CA=str(pki.ca))
    assert checks["nats"]["ok"], checks["nats"]
    row = checks["nats_tls"]
    assert row["ok"] and row["detail"].startswith("on (TLSv1.")
    assert str(pki.ca) in row["detail"] and "'nats-1'" in row["detail"]


def test_doctor_warns_of_a_server_certificate_expiring_within_30_days(tmp_path: Path, pki: Pki) -> None:
    for server in _server(tmp_path / "expiring-nats", pki, verify=False, cert=pki.expiring_cert):
        row = doctor(tmp_path, tls_url(server), TASKBUS_NATS_TLS_CA=str(pki.ca))["nats_tls"]
        assert not row["ok"] and not row["required"]
        assert "expires in 10 days" in row["detail"] or "expires in 9 days" in row["detail"], row
        assert "renew" in row["fix"]


def test_doctor_reports_plaintext_and_a_bad_ca_setting(tmp_path: Path, pki: Pki, nats_url: str, tls_server: EmbeddedNats) -> None:
    off = doctor(tmp_path, nats_url)["nats_tls"]
    assert off["ok"] and off["detail"].startswith("off") and "loopback" in off["detail"]
    bad = doctor(tmp_path, tls_url(tls_server), TASKBUS_NATS_TLS_CA=str(tmp_path / "missing-ca.pem"))
    assert not bad["nats"]["ok"] and "TASKBUS_NATS_TLS_CA" in bad["nats"]["detail"] and "nats_tls" not in bad


def route_block(pki: Pki, name: str, port: int, ports: list[int]) -> str:
    """A `cluster {}` block whose routes are TLS with certificates of the CA, both ways."""
    routes = ", ".join(json.dumps(f"nats-route://127.0.0.1:{p}") for p in ports)
    return (
        "cluster {\n"
        f"  name: {json.dumps(name)}\n"
        f"  listen: {json.dumps(f'127.0.0.1:{port}')}\n"
        f"  routes: [{routes}]\n"
        "  tls {\n"
        f"    cert_file: {json.dumps(str(pki.server_cert))}\n"
        f"    key_file: {json.dumps(str(pki.server_key))}\n"
        f"    ca_file: {json.dumps(str(pki.ca))}\n"
        "    verify: true\n"
        "    timeout: 5\n"
        "  }\n"
        "}\n"
    )


async def test_a_two_node_cluster_with_tls_routes_replicates_over_them(tmp_path: Path, pki: Pki) -> None:
    """Clients and routes both TLS: a stream with 2 replicas, written through one node and
    read through the other."""
    route_ports = [free_port(), free_port()]
    nodes = [
        EmbeddedNats(
            tmp_path / f"n{i}",
            name=f"tls-n{i}-{uuid.uuid4().hex[:6]}",
            authorization=tls_block(pki, verify=False) + route_block(pki, "tls-cluster", route_ports[i], route_ports),
        )
        for i in range(2)
    ]
    try:
        for node in nodes:
            node.start()
        first = settings_for(tmp_path, tls_url(nodes[0]), nats_tls_ca=str(pki.ca))
        second = settings_for(tmp_path, tls_url(nodes[1]), nats_tls_ca=str(pki.ca))
        stream, subject = f"TLS_{uuid.uuid4().hex[:8]}", f"tls.{uuid.uuid4().hex[:8]}"
        async with await Bus.for_settings(first, name="tls-n0") as a, await Bus.for_settings(second, name="tls-n1") as b:
            async with asyncio.timeout(60):  # until the two nodes have elected a JetStream meta leader
                while True:
                    try:
                        info = await a.js.add_stream(name=stream, subjects=[subject], num_replicas=2)
                        break
                    except (APIError, TimeoutError):
                        await asyncio.sleep(0.2)
            assert info.config.num_replicas == 2
            seq = await a.publish(subject, b"replicated over tls routes")
            async with asyncio.timeout(30):
                while True:
                    try:
                        stored = await b.js.get_msg(stream, seq)
                        break
                    except APIError:
                        await asyncio.sleep(0.1)
            assert stored.data == b"replicated over tls routes"
            assert "nats-1" in _peer_cert_subject(b)
        for port in route_ports:  # a route port speaks only TLS: a plaintext peer hears nothing
            assert await _speak_plaintext("127.0.0.1", port) == b""
    finally:
        for node in nodes:
            node.stop()


def test_the_context_refuses_tls_older_than_1_2_and_checks_host_names(tmp_path: Path, pki: Pki) -> None:
    context = tls_context(settings_for(tmp_path, "tls://nats-1:4222", nats_tls_ca=str(pki.ca)))
    assert context is not None
    assert context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert context.check_hostname and context.verify_mode == ssl.CERT_REQUIRED
    assert tls_context(settings_for(tmp_path, "nats://127.0.0.1:4222")) is None  # no TLS setting: nats-py's defaults
