"""The harness's server start: a ``taskbus serve`` whose picked port another process took
before it bound it is told apart from any other exit, so the harness can start it again on
a fresh port; on a free port the same wait returns once it answers."""

from __future__ import annotations

import os
import socket
import sys
from pathlib import Path

import pytest
from procs import LoggedProcess, PortTaken, wait_serving

from bus import Settings, free_port


def _serve(settings: Settings, tmp_path: Path, port: int) -> LoggedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBUS_")}
    env.update(
        TASKBUS_NATS_URL=settings.nats_url,
        TASKBUS_SUBJECT_PREFIX=settings.subject_prefix,
        TASKBUS_DATA_DIR=settings.data_dir,
        TASKBUS_JOB_SECRET=settings.job_secret,
    )
    argv = [sys.executable, "-m", "cli", "serve", "--transport", "http", "--host", "127.0.0.1", "--port", str(port)]
    return LoggedProcess(name=f"server-{port}", argv=argv, log=tmp_path / f"server-{port}.log", env=env)


async def test_a_server_whose_port_was_taken_says_so_and_one_on_a_free_port_serves(settings: Settings, tmp_path: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        blocked = _serve(settings, tmp_path, taken)
        blocked.start()
        try:
            with pytest.raises(PortTaken, match="address already in use"):
                await wait_serving(blocked, f"http://127.0.0.1:{taken}/mcp", timeout=120)
        finally:
            blocked.stop()
    port = free_port()
    server = _serve(settings, tmp_path, port)
    server.start()
    try:
        await wait_serving(server, f"http://127.0.0.1:{port}/mcp", timeout=120)
        assert server.alive
    finally:
        assert server.stop() is not None, "it stopped on SIGTERM"
