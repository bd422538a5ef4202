"""httpcore2's network layer on plain asyncio streams, with one send per request.

httpcore2 (the transport core of httpx2) does the HTTP: requests, responses, keep-alive,
pooling, proxies. What this module replaces is only its default network backend (anyio),
for two measured reasons (benchmarks/bench_gateway.py; each gateway call makes two
upstream requests): anyio's streams cost about 0.2 ms per request more than asyncio's,
and httpcore2 writes a request's head and body with two sends, which on loopback costs
another wake-up of the upstream. Here writes are buffered until the response is read
(or TLS starts), so a request leaves in one ``send``.
"""

from __future__ import annotations

import asyncio
import select
import socket
import ssl
import typing
from collections.abc import Iterable

import httpcore2

READ_LIMIT = 65536


def _readable(sock: socket.socket | None) -> bool:
    """Whether the kernel has data (or EOF) for ``sock`` that asyncio has not read yet."""
    if sock is None or sock.fileno() < 0:
        return True
    poller = select.poll()
    poller.register(sock.fileno(), select.POLLIN)
    return bool(poller.poll(0))


class AsyncioStream(httpcore2.AsyncNetworkStream):
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._pending: list[bytes] = []

    async def _flush(self, timeout: float | None) -> None:
        if not self._pending:
            return
        data, self._pending = b"".join(self._pending), []
        try:
            self._writer.write(data)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError:
            raise httpcore2.WriteTimeout("timed out sending the request") from None
        except OSError as exc:
            raise httpcore2.WriteError(f"sending the request failed ({type(exc).__name__})") from None

    async def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._pending.append(bytes(buffer))

    async def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        await self._flush(timeout)
        try:
            async with asyncio.timeout(timeout):
                return await self._reader.read(max_bytes)
        except TimeoutError:
            raise httpcore2.ReadTimeout("timed out reading the response") from None
        except OSError as exc:
            raise httpcore2.ReadError(f"reading the response failed ({type(exc).__name__})") from None

    async def aclose(self) -> None:
        self._pending.clear()
        self._writer.close()

    async def start_tls(
        self, ssl_context: ssl.SSLContext, server_hostname: str | None = None, timeout: float | None = None
    ) -> httpcore2.AsyncNetworkStream:
        await self._flush(timeout)  # a proxy's CONNECT
        try:
            async with asyncio.timeout(timeout):
                await self._writer.start_tls(ssl_context, server_hostname=server_hostname)
        except TimeoutError:
            raise httpcore2.ConnectTimeout("timed out in the TLS handshake") from None
        except (OSError, ssl.SSLError) as exc:
            raise httpcore2.ConnectError(str(exc)) from exc
        return self

    def get_extra_info(self, info: str) -> typing.Any:
        if info == "is_readable":  # an idle keep-alive connection the server closed or wrote to
            return self._reader.at_eof() or self._writer.is_closing() or _readable(self._writer.get_extra_info("socket"))
        if info == "ssl_object":
            return self._writer.get_extra_info("ssl_object")
        if info == "client_addr":
            return self._writer.get_extra_info("sockname")
        if info == "server_addr":
            return self._writer.get_extra_info("peername")
        if info == "socket":
            return self._writer.get_extra_info("socket")
        return None


class AsyncioBackend(httpcore2.AsyncNetworkBackend):
    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,
        local_address: str | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, limit=READ_LIMIT, local_addr=(local_address, 0) if local_address else None
                )
        except TimeoutError:
            raise httpcore2.ConnectTimeout(f"timed out connecting to {host}:{port}") from None
        except OSError as exc:
            raise httpcore2.ConnectError(f"{type(exc).__name__}: {exc.strerror or exc}") from None
        sock = writer.get_extra_info("socket")
        if sock is not None:
            for option in socket_options or ():
                sock.setsockopt(*option)
        return AsyncioStream(reader, writer)

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,
        socket_options: Iterable[httpcore2.SOCKET_OPTION] | None = None,
    ) -> httpcore2.AsyncNetworkStream:
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_unix_connection(path, limit=READ_LIMIT)
        except TimeoutError:
            raise httpcore2.ConnectTimeout(f"timed out connecting to {path}") from None
        except OSError as exc:
            raise httpcore2.ConnectError(f"{type(exc).__name__}: {exc.strerror or exc}") from None
        return AsyncioStream(reader, writer)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)
