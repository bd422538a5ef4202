"""The gateway's upstream HTTP client on real sockets: keep-alive reuse, a server that
closed an idle connection, TLS with certificate checks (openssl-made certificates)."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from ci_guard import require

from sandbox._gateway import UpstreamUnavailable
from sandbox._gateway._client import LeanClient

REPLY = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"ok\":true}"


async def serve(*, close_after: int = 0, ssl_context: ssl.SSLContext | None = None) -> tuple[asyncio.Server, list[int]]:
    """A tiny HTTP server: answers each POST; with close_after=N closes a connection after N replies."""
    connections: list[int] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        served = 0
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length"))
                await reader.readexactly(length)
                writer.write(REPLY)
                await writer.drain()
                served += 1
                if close_after and served >= close_after:
                    break
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_context)
    return server, connections


async def test_connections_are_kept_alive_and_reused() -> None:
    server, connections = await serve()
    port = server.sockets[0].getsockname()[1]
    client = LeanClient()
    try:
        for _ in range(5):
            response = await client.post(f"http://127.0.0.1:{port}/v1/x", headers={}, content=b"{}")
            assert response.status_code == 200 and await response.aread() == b'{"ok":true}'
            await response.aclose()
    finally:
        await client.aclose()
        server.close()
    assert len(connections) == 1


async def test_a_connection_the_server_closed_is_replaced_transparently() -> None:
    server, connections = await serve(close_after=1)
    port = server.sockets[0].getsockname()[1]
    client = LeanClient()
    try:
        for _ in range(3):
            response = await client.post(f"http://127.0.0.1:{port}/", headers={}, content=b"x")
            assert await response.aread() == b'{"ok":true}'
            await response.aclose()
    finally:
        await client.aclose()
        server.close()
    assert len(connections) == 3


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    require(shutil.which("openssl") is not None, "openssl", "apt-get install openssl")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )
    return cert, key


async def test_https_works_and_an_untrusted_certificate_is_refused(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server, _ = await serve(ssl_context=server_ctx)
    port = server.sockets[0].getsockname()[1]
    trusting = LeanClient(ssl_context=ssl.create_default_context(cafile=str(cert)))
    default = LeanClient()
    try:
        response = await trusting.post(f"https://localhost:{port}/v1/messages", headers={}, content=b"{}")
        assert response.status_code == 200 and await response.aread() == b'{"ok":true}'
        await response.aclose()
        with pytest.raises(UpstreamUnavailable, match="SSL|Certificate"):
            await default.post(f"https://localhost:{port}/v1/messages", headers={}, content=b"{}")
    finally:
        await trusting.aclose()
        await default.aclose()
        server.close()
