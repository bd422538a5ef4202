"""``ScriptedModelServer``: the scripted model app served by uvicorn, as an async context manager.

    async with ScriptedModelServer("write-a-file", log_path=tmp / "model.jsonl") as model:
        env["ANTHROPIC_BASE_URL"] = model.url

It serves in the caller's event loop (a task in a TaskGroup it owns), on a socket it
binds itself (``port=0`` picks a free port, known as soon as ``__aenter__`` returns).
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import logging
import socket
from collections.abc import Generator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any

import uvicorn

from ._app import ScriptedModelApp
from ._log import RequestLog, read_log
from ._script import Script, resolve_script

__all__ = ["ScriptedModelServer", "bind_socket", "http_impl"]

logger = logging.getLogger(__name__)


def http_impl() -> str:
    """``httptools`` when installed (several times faster than h11), else ``h11``."""
    return "httptools" if importlib.util.find_spec("httptools") is not None else "h11"


def bind_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # inherited by accepted sockets
        sock.bind((host, port))
        sock.listen(2048)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        # The owner of the event loop handles signals, not an embedded server.
        yield


class ScriptedModelServer:
    """The scripted model server, started on enter and stopped on exit.

    ``script``: a ``Script``, a shipped script name or a path; None = echo every prompt.
    ``scripts``: more named scripts that ``[script:NAME]`` markers can select.
    ``log_path``: JSON-lines request log. ``required_api_key``: 401 without it.
    ``start_timeout`` (10 s) bounds start-up, ``stop_timeout`` (5 s) the graceful stop of
    open connections; after that they are cancelled.
    """

    def __init__(
        self,
        script: Script | str | Path | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        log_path: str | Path | None = None,
        required_api_key: str | None = None,
        scripts: Mapping[str, Script] | None = None,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
    ) -> None:
        if isinstance(script, (str, Path)):
            script = resolve_script(str(script))
        self.script = script
        self.host = host
        self.port = port
        self.log_path = Path(log_path) if log_path is not None else None
        self._required_api_key = required_api_key
        self._scripts = scripts
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._log: RequestLog | None = None
        self._server: _Server | None = None
        self._socket: socket.socket | None = None
        self._stack: contextlib.AsyncExitStack | None = None
        self.app: ScriptedModelApp | None = None

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def requests(self) -> list[dict[str, Any]]:
        """The request log so far (needs ``log_path``)."""
        if self.log_path is None:
            raise ValueError("ScriptedModelServer was started without log_path")
        return read_log(self.log_path)

    async def __aenter__(self) -> ScriptedModelServer:
        self._socket = bind_socket(self.host, self.port)
        self.port = self._socket.getsockname()[1]
        self._log = RequestLog(self.log_path) if self.log_path is not None else None
        self.app = ScriptedModelApp(self.script, scripts=self._scripts, required_api_key=self._required_api_key, log=self._log)
        config = uvicorn.Config(
            self.app,
            lifespan="off",
            log_config=None,
            access_log=False,
            http=http_impl(),
            timeout_graceful_shutdown=int(self._stop_timeout),
            timeout_keep_alive=30,
        )
        self._server = _Server(config)
        self._stack = contextlib.AsyncExitStack()
        group = await self._stack.enter_async_context(asyncio.TaskGroup())
        serving = group.create_task(self._server.serve(sockets=[self._socket]), name="scripted-model-server")
        try:
            async with asyncio.timeout(self._start_timeout):
                while not self._server.started:
                    if serving.done():
                        break
                    await asyncio.sleep(0.005)
        except BaseException:
            await self._stop()
            raise
        if not self._server.started:
            await self._stop()
            raise RuntimeError("scripted model server did not start")
        logger.info("scripted model server on %s (script %s)", self.url, self.app.script.name)
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self._stop()

    async def _stop(self) -> None:
        server, stack = self._server, self._stack
        self._server = self._stack = None
        try:
            if server is not None:
                server.should_exit = True
            if stack is not None:
                async with asyncio.timeout(self._stop_timeout + 2):
                    await stack.aclose()
        except TimeoutError:
            if server is not None:
                server.force_exit = True
            logger.warning("scripted model server did not stop within %.0fs", self._stop_timeout + 2)
        finally:
            if self._socket is not None:
                self._socket.close()
                self._socket = None
            if self._log is not None:
                self._log.close()
