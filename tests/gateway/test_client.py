"""The gateway's upstream HTTP client on real sockets: keep-alive reuse, a server that
closed an idle connection, TLS with certificate checks (openssl-made certificates)."""

from __future__ import annotations

import asyncio
import base64
import logging
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from ci_guard import require

from sandbox._gateway import UpstreamUnavailable
from sandbox._gateway._client import UpstreamClient, proxy_for

REPLY = b'HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{"ok":true}'


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
    client = UpstreamClient()
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
    client = UpstreamClient()
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
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=localhost",
            "-addext",
            "subjectAltName=DNS:localhost",
            "-keyout",
            str(key),
            "-out",
            str(cert),
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


async def test_https_works_and_an_untrusted_certificate_is_refused(certificate: tuple[Path, Path]) -> None:
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    server, _ = await serve(ssl_context=server_ctx)
    port = server.sockets[0].getsockname()[1]
    trusting = UpstreamClient(ssl_context=ssl.create_default_context(cafile=str(cert)))
    default = UpstreamClient()
    try:
        response = await trusting.post(f"https://localhost:{port}/v1/messages", headers={}, content=b"{}")
        assert response.status_code == 200 and await response.aread() == b'{"ok":true}'
        await response.aclose()
        with pytest.raises(UpstreamUnavailable, match=r"SSL|Certificate"):
            await default.post(f"https://localhost:{port}/v1/messages", headers={}, content=b"{}")
    finally:
        await trusting.aclose()
        await default.aclose()
        server.close()


async def forward_proxy() -> tuple[asyncio.Server, list[bytes], list[bytes]]:
    """A tiny HTTP proxy: CONNECT tunnels, and plain requests relayed to the host in their
    absolute URL; records each request line it was asked to handle, and each head."""
    seen: list[bytes] = []
    heads: list[bytes] = []

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        line = head.split(b"\r\n", 1)[0]
        seen.append(line)
        heads.append(head)
        method, target, _ = line.split(b" ")
        if method == b"CONNECT":
            host, port = target.decode().rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            authority = target.decode().split("/")[2]
            host, port = authority.rsplit(":", 1)
            up_reader, up_writer = await asyncio.open_connection(host, int(port))
            up_writer.write(head)
        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, seen, heads


async def test_requests_go_through_the_proxy_the_environment_names_unless_no_proxy_says_otherwise(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    upstream, _ = await serve()
    proxy, seen, heads = await forward_proxy()
    port, proxy_port = upstream.sockets[0].getsockname()[1], proxy.sockets[0].getsockname()[1]
    monkeypatch.setenv("HTTP_PROXY", f"http://user:s3cret@127.0.0.1:{proxy_port}")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    via_proxy = UpstreamClient()  # reads the environment
    monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
    bypassing = UpstreamClient()
    try:
        response = await via_proxy.post(f"http://127.0.0.1:{port}/v1/messages", headers={}, content=b"{}")
        assert response.status_code == 200 and await response.aread() == b'{"ok":true}'
        await response.aclose()
        assert seen == [f"POST http://127.0.0.1:{port}/v1/messages HTTP/1.1".encode()]
        credentials = base64.b64encode(b"user:s3cret")
        sent = [line.split(b":", 1)[1].strip() for line in heads[0].split(b"\r\n") if line.lower().startswith(b"proxy-authorization:")]
        assert sent == [b"Basic " + credentials]  # the URL's credentials, to the proxy only
        assert "s3cret" not in caplog.text  # the proxy's password is never logged
        response = await bypassing.post(f"http://127.0.0.1:{port}/v1/messages", headers={}, content=b"{}")
        assert await response.aread() == b'{"ok":true}'
        await response.aclose()
        assert len(seen) == 1  # NO_PROXY: straight to the upstream
    finally:
        await via_proxy.aclose()
        await bypassing.aclose()
        proxy.close()
        upstream.close()


async def test_https_through_a_proxy_is_a_tunnel_and_the_certificate_is_still_checked(
    certificate: tuple[Path, Path],
) -> None:
    cert, key = certificate
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_ctx.load_cert_chain(cert, key)
    upstream, _ = await serve(ssl_context=server_ctx)
    proxy, seen, _ = await forward_proxy()
    port, proxy_port = upstream.sockets[0].getsockname()[1], proxy.sockets[0].getsockname()[1]
    proxies = {"https": f"http://127.0.0.1:{proxy_port}"}
    trusting = UpstreamClient(ssl_context=ssl.create_default_context(cafile=str(cert)), proxies=proxies)
    default = UpstreamClient(proxies=proxies)
    try:
        response = await trusting.post(f"https://localhost:{port}/v1/messages", headers={}, content=b"{}")
        assert response.status_code == 200 and await response.aread() == b'{"ok":true}'
        await response.aclose()
        assert seen == [f"CONNECT localhost:{port} HTTP/1.1".encode()]  # the proxy saw no request, only a tunnel
        with pytest.raises(UpstreamUnavailable, match="SSL"):
            await default.post(f"https://localhost:{port}/v1/messages", headers={}, content=b"{}")
    finally:
        await trusting.aclose()
        await default.aclose()
        proxy.close()
        upstream.close()


def test_no_proxy_rules_follow_the_standard_library() -> None:
    proxies = {"https": "proxy.corp:3128", "no": "internal.example,.svc"}
    assert proxy_for("https://api.anthropic.com/v1/messages", proxies) == "http://proxy.corp:3128"
    assert proxy_for("https://internal.example/v1", proxies) is None
    assert proxy_for("https://model.svc/v1", proxies) is None
    assert proxy_for("http://api.anthropic.com/v1", proxies) is None  # no http proxy named
    assert proxy_for("http://api.anthropic.com/v1", {"all": "proxy.corp:3128"}) == "http://proxy.corp:3128"
