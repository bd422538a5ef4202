"""A command running inside a sandbox: output lines as they come, then an exit code.

Backends feed an ``Execution`` from their own readers (a pipe for bwrap, the Docker
exec socket for docker); callers only see this class.

    ex = await sandbox.exec(["bash", "-c", "echo hi"])
    async for stream, line in ex:       # ("stdout" | "stderr", line without "\\n")
        ...
    code = await ex.wait(timeout=10)

The output queue is bounded (``max_lines``); a caller that never reads output
blocks the command once the queue and the pipe are full, so read it (or use
``collect()``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Literal

import msgspec

from bus import SandboxTimeout

logger = logging.getLogger(__name__)

Stream = Literal["stdout", "stderr"]
MAX_LINE_BYTES = 8 * 1024 * 1024
"""A longer line is delivered in pieces of this size."""


class ExecResult(msgspec.Struct, frozen=True, kw_only=True):
    exit_code: int
    stdout: list[str]
    stderr: list[str]
    timed_out: bool = False

    @property
    def out(self) -> str:
        return "\n".join(self.stdout)

    @property
    def err(self) -> str:
        return "\n".join(self.stderr)


class LineSplitter:
    """Bytes in, complete decoded lines out (UTF-8, invalid bytes replaced)."""

    def __init__(self, max_line: int = MAX_LINE_BYTES) -> None:
        self._buf = bytearray()
        self._max = max_line

    def feed(self, data: bytes) -> list[str]:
        self._buf += data
        lines = []
        while True:
            nl = self._buf.find(b"\n")
            if nl < 0:
                if len(self._buf) >= self._max:
                    lines.append(self._buf[: self._max].decode("utf-8", "replace"))
                    del self._buf[: self._max]
                    continue
                break
            lines.append(self._buf[:nl].decode("utf-8", "replace").removesuffix("\r"))
            del self._buf[: nl + 1]
        return lines

    def flush(self) -> list[str]:
        if not self._buf:
            return []
        line = self._buf.decode("utf-8", "replace")
        self._buf.clear()
        return [line]


class Execution:
    """Handle of one command in a sandbox. Iterate it for ``(stream, line)``; ``wait()``
    for the exit code (negative = killed by that signal, 128+n from Docker);
    ``timed_out`` tells whether the sandbox's wall clock killed it."""

    def __init__(
        self,
        argv: list[str],
        *,
        kill: Callable[[], Awaitable[None]],
        timed_out: Callable[[], bool],
        max_lines: int = 10_000,
    ) -> None:
        self.argv = argv
        self._queue: asyncio.Queue[tuple[Stream, str] | None] = asyncio.Queue(max_lines)
        self._open = 2
        self._exit: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._kill = kill
        self._timed_out = timed_out
        self._done_reading = False
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False

    # -- producer side (backends)
    async def _put(self, stream: Stream, line: str) -> None:
        await self._queue.put((stream, line))

    async def _eof(self) -> None:
        self._open -= 1
        if self._open == 0:
            await self._queue.put(None)

    def _set_exit(self, code: int) -> None:
        if not self._exit.done():
            self._exit.set_result(code)

    def _set_error(self, exc: BaseException) -> None:
        if not self._exit.done():
            self._exit.set_exception(exc)

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.append(task)

    # -- consumer side
    def __aiter__(self) -> Execution:
        return self

    async def __anext__(self) -> tuple[Stream, str]:
        if self._done_reading:
            raise StopAsyncIteration
        item = await self._queue.get()
        if item is None:
            self._done_reading = True
            raise StopAsyncIteration
        return item

    @property
    def returncode(self) -> int | None:
        if self._exit.done() and not self._exit.cancelled() and self._exit.exception() is None:
            return self._exit.result()
        return None

    @property
    def timed_out(self) -> bool:
        return self._timed_out()

    async def wait(self, *, timeout: float | None = None) -> int:
        """The exit code, once the command ended. Raises SandboxTimeout after ``timeout``."""
        try:
            async with asyncio.timeout(timeout):
                code = await asyncio.shield(self._exit)
                for task in self._tasks:
                    await asyncio.shield(task)
                return code
        except TimeoutError:
            raise SandboxTimeout(f"command {self.argv[0]!r} still running after {timeout} s") from None

    async def collect(self, *, timeout: float | None = None) -> ExecResult:
        """Read all output and wait for the exit (for short commands)."""
        out: list[str] = []
        err: list[str] = []
        try:
            async with asyncio.timeout(timeout):
                async for stream, line in self:
                    (out if stream == "stdout" else err).append(line)
                code = await self._exit
        except TimeoutError:
            raise SandboxTimeout(f"command {self.argv[0]!r} still running after {timeout} s") from None
        return ExecResult(exit_code=code, stdout=out, stderr=err, timed_out=self.timed_out)

    async def kill(self) -> None:
        """Kill this command (the sandbox stays up)."""
        await self._kill()

    async def _close(self) -> None:
        """Cancel the readers (used by destroy); time-bounded, never raises."""
        self._closing = True
        for task in self._tasks:
            if not task.done():
                task.cancel()
        for task in self._tasks:
            try:
                async with asyncio.timeout(2):
                    await task
            except (asyncio.CancelledError, TimeoutError):
                pass
            except Exception:  # a reader's own failure is already reported via _set_error
                logger.debug("reader of %s ended with an error", self.argv[0], exc_info=True)
        self._set_exit(-9)
        if self._open > 0:
            self._open = 0
            try:
                self._queue.put_nowait(None)
            except asyncio.QueueFull:
                pass
