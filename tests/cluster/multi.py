"""Several ``taskbus serve`` processes, each with its OWN data dir, on the 3-node cluster,
plus (optionally) one bwrap runner and the scripted model: what the multi-server tests
drive through the public surfaces (MCP over HTTP, the ``taskbus`` CLI)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2
from procs import SERVE_ATTEMPTS, LoggedProcess, PortTaken, wait_serving

from bus import free_port
from bus._natsauth import credentials_path
from bus._private import private_dir

from .conftest import Cluster

ROOT = Path(__file__).resolve().parents[2]
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "pytest", "version": "1"}},
}


def claude_path() -> str:
    path = ROOT / ".tools" / "claude" / "node_modules" / ".bin" / "claude"
    return str(path.resolve()) if path.exists() else ""


@dataclass
class Proc(LoggedProcess):
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"


@dataclass
class MultiServer:
    cluster: Cluster
    work: Path
    servers: int = 2
    runner: bool = False
    model_url: str = ""
    secret: str = field(default_factory=lambda: "multi-" + uuid.uuid4().hex)
    procs: dict[str, Proc] = field(default_factory=dict)

    def env(self, data: Path, role: str) -> dict[str, str]:
        creds = self.cluster.credentials(role) if role == "admin" else str(credentials_path(self.cluster.data, role))
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "TASKBUS_DATA_DIR": str(data),
            "TASKBUS_NATS_URL": self.cluster.url,
            "TASKBUS_SUBJECT_PREFIX": self.cluster.prefix,
            "TASKBUS_NATS_CREDENTIALS": creds,
            "TASKBUS_NATS_REPLICAS": "3",
            "TASKBUS_JOB_SECRET": self.secret,
            "TASKBUS_UPSTREAM_URL": self.model_url or "http://127.0.0.1:9",
            "TASKBUS_UPSTREAM_API_KEY": "scripted-model-key",
            "TASKBUS_CLAUDE_PATH": claude_path(),
            "TASKBUS_JOB_ACK_WAIT_S": "3",
            "TASKBUS_HEARTBEAT_S": "1",
            "TASKBUS_LOG_LEVEL": "info",
            "COLUMNS": "200",
        }

    def server(self, i: int) -> Proc:
        return self.procs[f"server-{i}"]

    async def __aenter__(self) -> MultiServer:
        self.work.mkdir(parents=True, exist_ok=True)
        for i in range(self.servers):
            private_dir(self.work / f"data-{i}")  # nothing shared on disk
            self.procs[f"server-{i}"] = self._server(i)
        if self.runner:
            data = private_dir(self.work / "runner-data")
            self.procs["runner"] = Proc(
                name="runner",
                argv=[
                    sys.executable,
                    "-m",
                    "cli",
                    "runner",
                    "--id",
                    "multi-r1",
                    "--backend",
                    "bwrap",
                    "--kinds",
                    "task,complete",
                    "--slots",
                    "3",
                ],
                env=self.env(data, "runner"),
                log=self.work / "runner.log",
            )
        for proc in self.procs.values():
            proc.start()
        for i in range(self.servers):
            for attempt in range(1, SERVE_ATTEMPTS + 1):
                try:
                    await self.wait_serving(i)
                    break
                except PortTaken:
                    if attempt == SERVE_ATTEMPTS:
                        raise
                    self.procs[f"server-{i}"] = self._server(i)  # on a fresh port
                    self.server(i).start()
        return self

    def _server(self, i: int) -> Proc:
        """``taskbus serve`` number ``i`` (its own data dir) on a freshly picked port."""
        port = free_port()
        return Proc(
            name=f"server-{i}",
            argv=[sys.executable, "-m", "cli", "serve", "--transport", "http", "--host", "127.0.0.1", "--port", str(port)],
            env=self.env(self.work / f"data-{i}", "server"),
            log=self.work / f"server-{i}.log",
            port=port,
        )

    async def __aexit__(self, *exc: object) -> None:
        for proc in self.procs.values():
            await asyncio.to_thread(proc.stop)

    async def wait_serving(self, i: int, timeout: float = 90) -> None:
        await wait_serving(self.server(i), self.server(i).url, timeout=timeout)

    def cli(self, *args: str, data_of: int = 0) -> Any:
        """``taskbus ARGS --json`` as the operator, with server ``data_of``'s data dir."""
        env = self.env(self.work / f"data-{data_of}", "admin")
        done = subprocess.run(
            [sys.executable, "-m", "cli", *args, "--json"], env=env, capture_output=True, text=True, timeout=120, cwd=str(ROOT)
        )
        assert done.returncode == 0, f"taskbus {' '.join(args)}: {done.stderr or done.stdout}"
        return json.loads(done.stdout)

    def make_key(self, *, day_usd: float | None = None) -> tuple[str, str]:
        """A new key (its secret, its prefix) of profile developer, limits raised for load."""
        self.cli(
            "profiles", "update", "developer", "--max-concurrent", "1000", "--rate-limit", "100000", "--day", "1000", "--month", "10000"
        )
        created = self.cli("keys", "create", "--profile", "developer", "--name", "multi")
        key, prefix = str(created["key"]), str(created["prefix"])
        if day_usd is not None:
            self.cli("budgets", "set", "--key", prefix, "--day", str(day_usd))
        return key, prefix

    @contextlib.asynccontextmanager
    async def client(self, i: int, key: str) -> AsyncIterator[Any]:
        """An MCP client over Streamable HTTP to server ``i``."""
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        async with (
            httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=300) as http,
            Client(streamable_http_client(self.server(i).url, http_client=http)) as client,
        ):
            yield client

    @contextlib.asynccontextmanager
    async def clients(self, key: str) -> AsyncIterator[list[Any]]:
        """One MCP client per server, entered together."""
        async with contextlib.AsyncExitStack() as exits:
            yield [await exits.enter_async_context(self.client(i, key)) for i in range(self.servers)]

    async def auth_status(self, i: int, key: str) -> int:
        """The HTTP status server ``i`` answers an MCP initialize with ``key`` (401: refused)."""
        async with httpx2.AsyncClient(timeout=30) as http:
            reply = await http.post(
                self.server(i).url, json=INIT, headers={"Authorization": f"Bearer {key}", "Accept": "application/json, text/event-stream"}
            )
            return reply.status_code
