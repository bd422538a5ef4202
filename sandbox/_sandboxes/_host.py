"""Host-side helpers shared by the backends: workspace ownership, pipes to lines."""

from __future__ import annotations

import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

from bus import SandboxError

from ._exec import Execution, LineSplitter, Stream
from ._spec import SandboxSpec


def chown_tree(path: Path, uid: int, gid: int) -> None:
    if os.geteuid() != 0:
        return
    os.chown(path, uid, gid)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            try:
                os.chown(os.path.join(root, name), uid, gid, follow_symlinks=False)
            except OSError:
                pass


def prepare_host_dirs(spec: SandboxSpec, uid: int, gid: int) -> None:
    """Workspace owned by the sandbox user; gateway sockets connectable by it."""
    workspace = Path(spec.workspace)
    workspace.mkdir(parents=True, exist_ok=True)
    chown_tree(workspace, uid, gid)
    if spec.socket_dir:
        folder = Path(spec.socket_dir)
        if not folder.is_dir():
            raise SandboxError(f"socket folder {folder} does not exist")
        os.chmod(folder, 0o755)
        for entry in folder.iterdir():
            if stat.S_ISSOCK(entry.lstat().st_mode):
                os.chmod(entry, 0o666)


async def pump(reader: asyncio.StreamReader, stream: Stream, ex: Execution) -> None:
    splitter = LineSplitter()
    try:
        while chunk := await reader.read(65536):
            for line in splitter.feed(chunk):
                await ex._put(stream, line)
        for line in splitter.flush():
            await ex._put(stream, line)
    finally:
        await ex._eof()


async def pump_fd(fd: int, stream: Stream, ex: Execution) -> None:
    """Read a pipe from the agent's command line by line into the execution."""
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**20, loop=loop)
    transport, _ = await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader, loop=loop), os.fdopen(fd, "rb", 0))
    try:
        await pump(reader, stream, ex)
    finally:
        transport.close()


async def feed_fd(fd: int, data: bytes | AsyncIterator[bytes]) -> None:
    """Write ``data`` (an iterator's chunks as they come) to ``fd``, then close it. When
    cancelled, ``fd`` is closed once no write is in flight (never under a writing thread)."""
    writing: asyncio.Future[None] | None = None
    try:
        chunks = _once(data) if isinstance(data, bytes) else data
        async for chunk in chunks:
            writing = asyncio.ensure_future(asyncio.to_thread(_write_all, fd, chunk))
            await asyncio.shield(writing)
            writing = None
    except OSError:
        writing = None
    finally:
        if writing is not None and not writing.done():

            def close_after(done: asyncio.Future[None]) -> None:
                if not done.cancelled():
                    done.exception()  # retrieved: the writer's failure is not logged as unhandled
                os.close(fd)

            writing.add_done_callback(close_after)
        else:
            os.close(fd)


async def _once(data: bytes) -> AsyncIterator[bytes]:
    yield data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
