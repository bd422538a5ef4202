"""A whole stack on real ports, for tests that speak HTTP to it (metrics, console): the
scripted model, a real bwrap runner and ``run_server`` with the Streamable HTTP transport."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import msgspec
from server_kit import require_or_skip

from bus import Settings
from server._service import run_server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def e2e_ready(settings: Settings, claude: Path) -> Settings:
    """``settings`` with bwrap, the Claude CLI and the shared sandbox image linked in."""
    images = Settings.load({}).data_path / "images"
    if not images.is_dir():
        require_or_skip("the sandbox image", "run `taskbus sandbox build-image`")
    data = settings.data_path
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "images").exists():
        (data / "images").symlink_to(images)
    return msgspec.structs.replace(settings, sandbox_backend="bwrap", claude_path=str(claude))


@dataclass
class HttpStack:
    settings: Settings
    base: str
    """``http://127.0.0.1:<port>`` of the server."""
    runner: object


@contextlib.asynccontextmanager
async def http_stack(settings: Settings, *, slots: int = 2, runner_metrics: bool = True) -> AsyncIterator[HttpStack]:
    from sandbox import Runner
    from sandbox._scripted import ScriptedModelServer

    async with ScriptedModelServer() as model:
        settings = msgspec.structs.replace(settings, upstream_url=model.url, runner_metrics_port=free_port() if runner_metrics else 0)
        async with Runner(settings, backend="bwrap", slots=slots) as runner:
            ready, stop, bound = asyncio.Event(), asyncio.Event(), []
            task = asyncio.create_task(
                run_server(settings, transport="http", host="127.0.0.1", port=0, ready=ready, stop=stop, bound=bound)
            )
            try:
                async with asyncio.timeout(30):
                    await asyncio.wait({task, asyncio.create_task(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
                if task.done():
                    task.result()
                yield HttpStack(settings, f"http://127.0.0.1:{bound[0]}", runner)
            finally:
                stop.set()
                async with asyncio.timeout(30):
                    await task
