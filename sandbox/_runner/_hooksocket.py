"""The runner side of the PreToolUse hook: a unix socket per task that answers
"may this tool call run?".

The socket lives next to the model gateway's (mounted read-only at /run/taskbus, so
inside the sandbox it is ``/run/taskbus/hook.sock``). Protocol, one call per
connection: the hook sends Claude Code's hook event (JSON) and shuts its write side;
the runner answers one JSON object, ``{"decision": "allow"}`` or
``{"decision": "block", "reason": "..."}``, and closes. Anything else (no answer,
garbage, a closed socket) makes the hook block the call: it fails closed.

Everything inside the sandbox can connect here, so requests are untrusted: each is
size-limited and time-limited, few are served at once, and denials become ``security``
notices only up to ``MAX_NOTICES`` per task (then one ``notices_suppressed``), so a
flood of fake requests cannot flood the task's events.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType

from .._gateway import SecurityNotice
from .._gateway._http import listen_unix
from ._hookpolicy import Denial, HookRules, decide

logger = logging.getLogger(__name__)

HOOK_SOCKET = "hook.sock"
MAX_REQUEST_BYTES = 1024 * 1024
REQUEST_TIMEOUT_S = 20.0
MAX_CONCURRENT = 4
MAX_NOTICES = 50
POLICY_MARK = "[taskbus policy: "


class HookServer:
    """``async with HookServer(path, rules, on_security=...)``: serves until the block ends."""

    def __init__(
        self,
        path: Path,
        rules: HookRules,
        *,
        task_id: str,
        on_security: Callable[[SecurityNotice], Awaitable[None]],
        max_notices: int = MAX_NOTICES,
    ) -> None:
        self.path = path
        self.rules = rules
        self.task_id = task_id
        self._on_security = on_security
        self._max_notices = max_notices
        self.denials = 0
        self.allowed = 0
        self._sock: socket.socket | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._accept: asyncio.Task[None] | None = None
        self._calls: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(MAX_CONCURRENT)

    async def __aenter__(self) -> HookServer:
        sock = listen_unix(self.path)  # fails if anything exists there: the folder is new and ours
        self._sock = sock
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        self._accept = self._tg.create_task(self._accept_loop(sock), name=f"hook-accept-{self.task_id}")
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        tg, self._tg = self._tg, None
        if tg is not None:
            for task in (self._accept, *self._calls):
                if task is not None:
                    task.cancel()
            try:
                await tg.__aexit__(None, None, None)
            except BaseException:
                logger.exception("hook server of task %s: a handler failed at close", self.task_id)
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with contextlib.suppress(OSError):
            os.unlink(self.path)
        logger.info("hook of task %s: %d calls allowed, %d blocked", self.task_id, self.allowed, self.denials)

    async def _accept_loop(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        assert self._tg is not None
        while True:
            await self._slots.acquire()
            try:
                conn, _ = await loop.sock_accept(sock)
            except BaseException:
                self._slots.release()
                raise
            call = self._tg.create_task(self._serve(conn), name=f"hook-call-{self.task_id}")
            self._calls.add(call)
            call.add_done_callback(self._calls.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        try:
            conn.setblocking(False)
            try:
                async with asyncio.timeout(REQUEST_TIMEOUT_S):
                    data = await _read_all(loop, conn)
                    answer = await self.answer(data)
                    await loop.sock_sendall(conn, answer)
            except (TimeoutError, OSError) as exc:
                logger.debug("hook of task %s: a call failed: %s", self.task_id, exc)
            except Exception:  # never into the task group: it would cancel the task itself
                logger.exception("hook of task %s: a call failed; the hook blocks it (no answer)", self.task_id)
        finally:
            conn.close()
            self._slots.release()

    async def answer(self, data: bytes | None) -> bytes:
        """The reply to one request (``None``: too large)."""
        denial: Denial | None
        if data is None:
            denial = Denial("hook_error", f"the hook input is larger than {MAX_REQUEST_BYTES} bytes")
        else:
            try:
                event = json.loads(data)
            except ValueError:
                event = None
            denial = decide(self.rules, event)
        if denial is None:
            self.allowed += 1
            return b'{"decision": "allow"}\n'
        self.denials += 1
        await self._notice(denial)
        reason = f"{POLICY_MARK}{denial.kind}] {denial.reason}"
        return json.dumps({"decision": "block", "reason": reason}).encode() + b"\n"

    async def _notice(self, denial: Denial) -> None:
        if self.denials <= self._max_notices:
            await self._on_security(SecurityNotice(denial.kind, f"tool call blocked: {denial.reason}", denial.severity))
        elif self.denials == self._max_notices + 1:
            await self._on_security(
                SecurityNotice(
                    "notices_suppressed",
                    f"more than {self._max_notices} tool calls blocked; further ones are not reported",
                    "warning",
                )
            )


async def _read_all(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        chunk = await loop.sock_recv(conn, 65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_REQUEST_BYTES:
            return None
        chunks.append(chunk)
