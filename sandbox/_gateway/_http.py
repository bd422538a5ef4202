"""A small HTTP/1.1 server on a unix socket (h11 on asyncio streams).

Why not uvicorn: one server runs per task, and uvicorn's shutdown alone waits
100-200 ms (a 0.1 s tick and a fixed 0.1 s sleep), which is the whole per-task overhead
budget. This one starts and stops in about a millisecond.

Keep-alive, chunked responses for streams, a body size limit and an idle timeout.
Connection tasks run in a TaskGroup owned by ``UnixHttpServer``; a handler's error is
logged and answered with a 500 (or the connection is closed mid-response), never raised
into the group.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import h11

from bus import SandboxError

from .._privdirs import check_own_dir

__all__ = ["HttpRequest", "Responder", "UnixHttpServer"]

logger = logging.getLogger(__name__)

READ_SIZE = 65536
MAX_UNIX_PATH = 107


@dataclass(slots=True)
class HttpRequest:
    method: str
    path: str
    query: str
    headers: list[tuple[str, str]]
    """Lower-cased names, in order."""
    body: bytes

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key == name:
                return value
        return None


def _reason(status: int) -> bytes:
    try:
        return http.HTTPStatus(status).phrase.encode()
    except ValueError:
        return b""


class ClientGone(ConnectionError):
    """The client closed the connection while a response was being sent."""


class Responder:
    """Sends one response: ``start`` + ``send``* + ``end``, or ``full``."""

    __slots__ = ("_conn", "_head", "_writer", "finished", "started")

    def __init__(self, conn: h11.Connection, writer: asyncio.StreamWriter, *, head: bool = False) -> None:
        self._conn = conn
        self._writer = writer
        self._head = head
        self.started = False
        self.finished = False

    async def _write(self, data: bytes) -> None:
        try:
            self._writer.write(data)
            await self._writer.drain()
        except (ConnectionError, RuntimeError) as exc:
            raise ClientGone(str(exc)) from None

    async def start(self, status: int, headers: list[tuple[str, str]]) -> None:
        self.started = True
        await self._write(self._conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status))) or b"")

    async def send(self, chunk: bytes) -> None:
        if chunk and not self._head:
            await self._write(self._conn.send(h11.Data(data=chunk)) or b"")

    async def end(self) -> None:
        self.finished = True
        await self._write(self._conn.send(h11.EndOfMessage()) or b"")

    async def full(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        headers = [*headers, ("content-length", str(len(body)))]
        self.started = True
        data = self._conn.send(h11.Response(status_code=status, headers=headers, reason=_reason(status))) or b""
        if body and not self._head:
            data += self._conn.send(h11.Data(data=body)) or b""
        data += self._conn.send(h11.EndOfMessage()) or b""
        self.finished = True
        await self._write(data)


Handler = Callable[[HttpRequest, Responder], Awaitable[None]]
ErrorBody = Callable[[int, str], tuple[list[tuple[str, str]], bytes]]


def listen_unix(path: Path) -> socket.socket:
    """A non-blocking listening unix socket at ``path`` that the sandbox's non-root user
    may connect to; binding fails if anything already exists there."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
        os.chmod(path, 0o666)  # the sandbox's non-root user connects to it
        sock.listen(128)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class UnixHttpServer:
    """``async with UnixHttpServer(path, handler, error_body=...) as server:``."""

    def __init__(
        self,
        path: Path,
        handler: Handler,
        *,
        error_body: ErrorBody,
        max_body_bytes: int = 32 * 1024 * 1024,
        idle_timeout: float = 300.0,
        stop_timeout: float = 2.0,
    ) -> None:
        if len(os.fsencode(path)) > MAX_UNIX_PATH:
            raise SandboxError(f"unix socket path is too long ({len(os.fsencode(path))} > {MAX_UNIX_PATH} bytes): {path}")
        self.path = path
        self._handler = handler
        self._error_body = error_body
        self._max_body = max_body_bytes
        self._idle_timeout = idle_timeout
        self._stop_timeout = stop_timeout
        self._stack: contextlib.AsyncExitStack | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._sock: socket.socket | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def __aenter__(self) -> UnixHttpServer:
        check_own_dir(self.path.parent)  # nobody else can swap the socket for a link
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        sock = listen_unix(self.path)
        self._sock = sock
        stack = contextlib.AsyncExitStack()
        self._tg = await stack.enter_async_context(asyncio.TaskGroup())
        stack.push_async_callback(self._stop_tasks)
        self._stack = stack
        self._spawn(self._accept_loop(sock), f"gateway-accept {self.path.name}")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()

    async def _stop_tasks(self) -> None:
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        if tasks:
            _done, pending = await asyncio.wait(tasks, timeout=self._stop_timeout)
            for task in pending:
                logger.warning("gateway connection task %s did not stop within %.1fs", task.get_name(), self._stop_timeout)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        assert self._tg is not None
        task = self._tg.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        n = 0
        while True:
            try:
                conn, _addr = await loop.sock_accept(sock)
            except OSError as exc:
                logger.error("gateway accept on %s failed: %s", self.path, exc)
                return
            n += 1
            self._spawn(self._serve(conn), f"gateway-conn-{n}")

    async def _serve(self, conn: socket.socket) -> None:
        writer: asyncio.StreamWriter | None = None
        try:
            reader, writer = await asyncio.open_unix_connection(sock=conn, limit=READ_SIZE)
            await self._connection(reader, writer)
        except asyncio.CancelledError:
            raise
        except (ConnectionError, ClientGone, TimeoutError):
            pass
        except Exception:
            logger.exception("gateway connection failed")
        finally:
            if writer is not None:
                writer.close()
            else:
                conn.close()

    async def _next_event(self, conn: h11.Connection, reader: asyncio.StreamReader) -> h11.Event | type:
        while True:
            event = conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            async with asyncio.timeout(self._idle_timeout):
                data = await reader.read(READ_SIZE)
            conn.receive_data(data)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = h11.Connection(h11.SERVER, max_incomplete_event_size=64 * 1024)
        while True:
            try:
                event = await self._next_event(conn, reader)
                if isinstance(event, h11.ConnectionClosed) or event is h11.PAUSED:
                    return
                if not isinstance(event, h11.Request):
                    return
                if conn.they_are_waiting_for_100_continue:
                    writer.write(conn.send(h11.InformationalResponse(status_code=100, headers=[])) or b"")
                body = bytearray()
                while True:
                    part = await self._next_event(conn, reader)
                    if isinstance(part, h11.Data):
                        body += part.data
                        if len(body) > self._max_body:
                            await self._refuse(conn, writer, 413, f"request body over {self._max_body} bytes")
                            return
                    elif isinstance(part, h11.EndOfMessage):
                        break
                    else:
                        return
            except h11.RemoteProtocolError as exc:
                await self._refuse(conn, writer, exc.error_status_hint, f"malformed HTTP request: {exc}")
                return
            target = event.target.decode("latin-1")
            path, _, query = target.partition("?")
            request = HttpRequest(
                method=event.method.decode("latin-1"),
                path=path,
                query=query,
                headers=[(k.decode("latin-1"), v.decode("latin-1")) for k, v in event.headers],
                body=bytes(body),
            )
            responder = Responder(conn, writer, head=request.method == "HEAD")
            try:
                await self._handler(request, responder)
            except (asyncio.CancelledError, ClientGone):
                raise
            except Exception:
                logger.exception("gateway handler failed on %s %s", request.method, request.path)
                if not responder.started:
                    await self._refuse(conn, writer, 500, "internal error in the taskbus model gateway")
                return
            if not responder.finished:
                return
            if conn.our_state is h11.MUST_CLOSE or conn.their_state is h11.MUST_CLOSE:
                return
            try:
                conn.start_next_cycle()
            except h11.LocalProtocolError:
                return

    async def _refuse(self, conn: h11.Connection, writer: asyncio.StreamWriter, status: int, message: str) -> None:
        if conn.our_state not in (h11.IDLE, h11.SEND_RESPONSE):
            return
        headers, body = self._error_body(status, message)
        responder = Responder(conn, writer)
        with contextlib.suppress(ClientGone, h11.LocalProtocolError):
            await responder.full(status, [*headers, ("connection", "close")], body)
