"""A lean HTTP/1.1 client (h11 on asyncio streams) for the model upstream.

Why not httpx: every model call costs the gateway two upstream requests (count_tokens,
then the call); httpx spends about 1 ms of Python per request on this machine, this
client about 0.3 ms. It does only what the gateway needs: POST with a body, a response
whose body is streamed as it arrives, keep-alive connections per origin (bounded),
http and https (TLS with certifi's or the system's CAs), and timeouts.

Errors are ``UpstreamUnavailable`` (no connection could be made: the request was never
sent) and ``UpstreamFailed`` (anything after that), both ``ModelError``s.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import h11

from bus import ModelError

__all__ = ["HttpResponse", "LeanClient", "UpstreamFailed", "UpstreamUnavailable"]

logger = logging.getLogger(__name__)

READ_SIZE = 65536


class UpstreamUnavailable(ModelError):
    """No connection to the upstream could be made; nothing was sent."""


class UpstreamFailed(ModelError):
    """The upstream connection failed after the request was (maybe) sent."""


def _ssl_context() -> ssl.SSLContext:
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()


class _Conn:
    __slots__ = ("h11", "origin", "reader", "writer")

    def __init__(self, origin: tuple[str, str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.origin = origin
        self.reader = reader
        self.writer = writer
        self.h11 = h11.Connection(h11.CLIENT, max_incomplete_event_size=64 * 1024)

    def close(self) -> None:
        self.writer.close()


class HttpResponse:
    """Status and headers are read; the body is read with ``aiter_raw`` or ``aread``.
    Always ``aclose()`` it (a response not read to its end closes its connection)."""

    def __init__(self, client: LeanClient, conn: _Conn, event: h11.Response, read_timeout: float) -> None:
        self._client = client
        self._conn: _Conn | None = conn
        self._read_timeout = read_timeout
        self.status_code = event.status_code
        self.headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers]

    def header(self, name: str, default: str = "") -> str:
        for key, value in self.headers:
            if key == name:
                return value
        return default

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        try:
            while True:
                event = await self._client._next_event(conn, self._read_timeout)
                if isinstance(event, h11.Data):
                    yield bytes(event.data)
                elif isinstance(event, h11.EndOfMessage):
                    self._conn = None
                    self._client._release(conn, reusable=True)
                    return
                else:
                    raise UpstreamFailed("the model API closed the connection mid-response")
        except (OSError, h11.ProtocolError, TimeoutError, asyncio.IncompleteReadError) as exc:
            raise UpstreamFailed(f"the model API connection failed mid-response ({type(exc).__name__})") from None

    async def aread(self, limit: int = 64 * 1024 * 1024) -> bytes:
        body = bytearray()
        async for chunk in self.aiter_raw():
            body += chunk
            if len(body) > limit:
                await self.aclose()
                raise UpstreamFailed(f"the model API response is over {limit} bytes")
        return bytes(body)

    async def aclose(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            self._client._release(conn, reusable=False)


class LeanClient:
    """Keep-alive connections per origin, at most ``max_connections`` in use at once."""

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        write_timeout: float = 60.0,
        max_connections: int = 200,
        max_idle: int = 32,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._write_timeout = write_timeout
        self._slots = asyncio.Semaphore(max_connections)
        self._max_idle = max_idle
        self._idle: list[_Conn] = []
        self._ssl = ssl_context
        self._closed = False

    async def aclose(self) -> None:
        self._closed = True
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    async def post(
        self, url: str, *, headers: dict[str, str], content: bytes, read_timeout: float | None = None
    ) -> HttpResponse:
        """Send a POST and return once the response status and headers are in."""
        parts = urlsplit(url)
        scheme, host = parts.scheme, parts.hostname or ""
        port = parts.port or (443 if scheme == "https" else 80)
        origin = (scheme, host, port)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        host_header = host if parts.port is None else f"{host}:{port}"
        request = [("host", host_header), *headers.items(), ("content-length", str(len(content)))]
        timeout = self._read_timeout if read_timeout is None else read_timeout
        await self._slots.acquire()
        try:
            for attempt in (0, 1):
                conn, reused = await self._acquire(origin)
                try:
                    data = conn.h11.send(h11.Request(method="POST", target=target, headers=request)) or b""
                    if content:
                        data += conn.h11.send(h11.Data(data=content)) or b""
                    data += conn.h11.send(h11.EndOfMessage()) or b""
                    conn.writer.write(data)
                    async with asyncio.timeout(self._write_timeout):
                        await conn.writer.drain()
                    while True:
                        event = await self._next_event(conn, timeout)
                        if isinstance(event, h11.Response):
                            return HttpResponse(self, conn, event, timeout)
                        if not isinstance(event, h11.InformationalResponse):
                            raise h11.RemoteProtocolError("connection closed before a response")
                except (OSError, h11.ProtocolError, asyncio.IncompleteReadError) as exc:
                    conn.close()
                    if reused and attempt == 0:
                        continue  # a kept-alive connection the server had closed: once more, fresh
                    raise UpstreamFailed(f"the model API connection failed ({type(exc).__name__})") from None
                except TimeoutError:
                    conn.close()
                    raise UpstreamFailed("the model API did not answer in time") from None
                except BaseException:
                    conn.close()
                    raise
            raise AssertionError("unreachable")
        except BaseException:
            self._slots.release()
            raise

    async def _acquire(self, origin: tuple[str, str, int]) -> tuple[_Conn, bool]:
        if self._closed:
            raise UpstreamUnavailable("the upstream client is closed")
        for index in range(len(self._idle) - 1, -1, -1):
            conn = self._idle[index]
            if conn.origin == origin:
                del self._idle[index]
                if conn.reader.at_eof() or conn.writer.is_closing():
                    conn.close()
                    continue
                return conn, True
        scheme, host, port = origin
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = _ssl_context()
            context = self._ssl
        try:
            async with asyncio.timeout(self._connect_timeout):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, server_hostname=host if context else None, limit=READ_SIZE
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            raise UpstreamUnavailable(f"cannot connect to the model API at {scheme}://{host}:{port} ({type(exc).__name__})") from None
        return _Conn(origin, reader, writer), False

    async def _next_event(self, conn: _Conn, timeout: float) -> h11.Event | type:
        while True:
            event = conn.h11.next_event()
            if event is not h11.NEED_DATA:
                return event
            async with asyncio.timeout(timeout):
                data = await conn.reader.read(READ_SIZE)
            conn.h11.receive_data(data)

    def _release(self, conn: _Conn, *, reusable: bool) -> None:
        self._slots.release()
        reusable = reusable and not self._closed and len(self._idle) < self._max_idle
        if reusable and conn.h11.our_state is h11.DONE and conn.h11.their_state is h11.DONE:
            with contextlib.suppress(h11.LocalProtocolError):
                conn.h11.start_next_cycle()
                self._idle.append(conn)
                return
        conn.close()
