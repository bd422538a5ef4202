"""A real taskbus stack in separate processes, for fault injection.

``ChaosStack`` owns: an embedded nats-server (JetStream on files in its own folder, a
fixed port so it can be stopped and restarted on the same store) or, with
``cluster_nodes=3``, a 3-node NATS cluster with every stream and bucket at 3 replicas
(``kill_nats_node``/``restart_nats_node``), the scripted model
server (in this process), runners (``taskbus runner``: bwrap, optionally Docker), the
audit subscriber (``taskbus audit run``) and the MCP HTTP server (``taskbus serve``),
each a child process in its own session that a scenario can SIGKILL and restart.

Use it as ``async with ChaosStack(work_dir) as stack:`` inside a test or a script
(not a yield fixture: the MCP client and the model server own task groups).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sys
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec
from nats_users import with_unlimited_user
from procs import SERVE_ATTEMPTS, PortTaken, wait_serving
from procs import LoggedProcess as Child

from bus import Bus, EmbeddedCluster, EmbeddedNats, Settings
from bus._embedded import free_port
from bus._natsauth import credentials_path

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[2]
PREFIX = "chaos"
KEY_PROFILE = "developer"


def claude_path() -> str:
    path = ROOT / ".tools" / "claude" / "node_modules" / ".bin" / "claude"
    return str(path.resolve()) if path.exists() else ""


def image_cache() -> Path:
    """The shared sandbox image folder (``taskbus sandbox build-image`` made it)."""
    return Settings.load({}).image_cache_path / "images"


HARNESS_CREDENTIALS = "chaos-harness.json"


def _with_harness_user(data: Path) -> str:
    """The users ``taskbus up`` gives its NATS (one per role: every child connects as its
    role), plus one for this harness with no permission limits: hostile-input plays the
    worst client, one that may publish on every subject (a leaked server or runner user)."""
    return with_unlimited_user(data, PREFIX, user="chaos-harness", credentials=HARNESS_CREDENTIALS)


@dataclass
class ChaosStack:
    work: Path
    runners: dict[str, str] = field(default_factory=lambda: {"r-bwrap-1": "bwrap", "r-bwrap-2": "bwrap"})
    slots: int = 2
    model_scripts: dict[str, str] = field(default_factory=dict)
    upstream_key: str | None = None
    data_dir: Path | None = None
    ack_wait_s: int = 3
    model_port: int = 0
    profile_changes: dict[str, Any] = field(default_factory=dict)
    key: str = ""
    key_id: str = ""
    children: dict[str, Child] = field(default_factory=dict)
    settings: Settings | None = None
    nats: EmbeddedNats | None = None
    http_port: int = 0
    model: Any = None
    cluster_nodes: int = 0
    """0: one nats-server; N: an N-node cluster, every stream and bucket at N replicas."""
    cluster: EmbeddedCluster | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> ChaosStack:
        from sandbox._scripted import ScriptedModelServer, parse_script

        self.work.mkdir(parents=True, exist_ok=True)
        data = self.data_dir or self.work / "data"
        data.mkdir(parents=True, exist_ok=True)
        if not (data / "images").exists():
            (data / "images").symlink_to(image_cache())
        if self.cluster_nodes:
            self.cluster = EmbeddedCluster(self.work / "nats", size=self.cluster_nodes, authorization=_with_harness_user(data))
            await self.cluster.__aenter__()
            nats_url = self.cluster.url
        else:
            self.nats = EmbeddedNats(self.work / "nats", log_path=self.work / "nats-server.log", authorization=_with_harness_user(data))
            await self.nats.__aenter__()
            nats_url = self.nats.url
        extra = {n: parse_script(t, source=n, name=n) for n, t in self.model_scripts.items()}
        self.model = ScriptedModelServer(
            port=self.model_port, log_path=self.work / "model-requests.jsonl", required_api_key=self.upstream_key, scripts=extra
        )
        await self.model.__aenter__()
        self.http_port = free_port()
        self.settings = Settings.load(
            {},
            data_dir=str(data),
            nats_url=nats_url,
            subject_prefix=PREFIX,
            nats_replicas=max(1, self.cluster_nodes),
            job_secret="chaos-" + uuid.uuid4().hex,
            upstream_url=self.model.url,
            upstream_api_key=self.upstream_key or "scripted-model-key",
            claude_path=claude_path(),
            job_ack_wait_s=self.ack_wait_s,
            heartbeat_s=1.0,
            http_port=self.http_port,
            nats_credentials=str(data / HARNESS_CREDENTIALS),  # the harness: every subject, to attack them all
        )
        await self._make_key()
        for runner_id, backend in self.runners.items():
            self.add_runner(runner_id, backend)
        self.children["audit"] = self._child("audit", ["audit", "run"], "audit")
        self.children["server"] = self._server()
        for child in self.children.values():
            child.start()
        for attempt in range(1, SERVE_ATTEMPTS + 1):
            try:
                await self.wait_server()
                break
            except PortTaken:
                if attempt == SERVE_ATTEMPTS:
                    raise
                logger.warning("port %d was taken before the server bound it; a fresh one", self.http_port)
                self.http_port = free_port()
                self.settings = msgspec.structs.replace(self.settings, http_port=self.http_port)
                self.children["server"] = self._server()
                self.children["server"].start()
        return self

    def _server(self) -> Child:
        return self._child("server", ["serve", "--transport", "http", "--host", "127.0.0.1"], "server")

    async def __aexit__(self, *exc: object) -> None:
        try:
            for child in self.children.values():
                await asyncio.to_thread(child.stop, 90)
        finally:
            try:
                if self.model is not None:
                    await self.model.__aexit__(None, None, None)
            finally:
                if self.nats is not None:
                    await self.nats.__aexit__(None, None, None)
                if self.cluster is not None:
                    await self.cluster.__aexit__(None, None, None)

    def env(self, role: str = "cli") -> dict[str, str]:
        """A child's environment; ``role`` = its NATS user (credentials file in the data dir)."""
        s = self.settings
        assert s is not None
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": os.environ.get("HOME", "/root"),
            "TASKBUS_NATS_URL": s.nats_url,
            "TASKBUS_NATS_REPLICAS": str(s.nats_replicas),
            "TASKBUS_NATS_CREDENTIALS": str(credentials_path(Path(s.data_dir), role)),
            "TASKBUS_SUBJECT_PREFIX": s.subject_prefix,
            "TASKBUS_DATA_DIR": s.data_dir,
            "TASKBUS_JOB_SECRET": s.job_secret,
            "TASKBUS_UPSTREAM_URL": s.upstream_url,
            "TASKBUS_UPSTREAM_API_KEY": s.upstream_api_key,
            "TASKBUS_CLAUDE_PATH": s.claude_path,
            "TASKBUS_JOB_ACK_WAIT_S": str(self.ack_wait_s),
            "TASKBUS_HEARTBEAT_S": "1",
            "TASKBUS_HTTP_PORT": str(self.http_port),
            "TASKBUS_LOG_LEVEL": "info",
            "COLUMNS": "200",
        }

    def _child(self, name: str, args: list[str], role: str) -> Child:
        return Child(name, [sys.executable, "-m", "cli", *args], self.work / f"{name}.log", self.env(role))

    def add_runner(self, runner_id: str, backend: str, *, start: bool = False) -> Child:
        child = self._child(
            runner_id,
            ["runner", "--id", runner_id, "--backend", backend, "--kinds", "task,complete", "--slots", str(self.slots), "--grace", "60"],
            "runner",
        )
        self.children[runner_id] = child
        if start:
            child.start()
        return child

    async def _make_key(self) -> None:
        from profiles import Store

        assert self.settings is not None
        async with Store.for_settings(self.settings) as store:
            await store.update_profile(KEY_PROFILE, max_concurrent=256, rate_limit_per_min=1_000_000, **self.profile_changes)
            await store.set_budget(profile=KEY_PROFILE, day_usd=1000.0, month_usd=10_000.0)
            self.key, record = await store.create_key(KEY_PROFILE, name="chaos")
            self.key_id = record.prefix

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}/mcp"

    async def wait_server(self, timeout: float = 60) -> None:
        """Until the HTTP server answers (a 401 without a key is an answer)."""
        await wait_serving(self.children["server"], self.url, timeout=timeout)

    async def restart(self, name: str) -> None:
        """SIGKILL ``name`` and start it again (the server: wait until it serves)."""
        child = self.children[name]
        await asyncio.to_thread(child.kill)
        child.start()
        if name == "server":
            await self.wait_server()

    def restart_nats(self, *, down_s: float = 1.0) -> None:
        """Stop nats-server (TERM, like a crash of the host service) and start it again on
        the same port with the same store."""
        assert self.nats is not None
        port, store = self.nats.port, self.nats.store_dir
        self.nats.kill()
        time.sleep(down_s)  # the outage itself, not a wait for something
        self.nats = EmbeddedNats(store, port=port, log_path=self.work / "nats-server.log", authorization=self.nats.authorization)
        self.nats.start()

    def kill_nats_node(self, i: int) -> None:
        """SIGKILL node ``i`` of the cluster (its store stays)."""
        assert self.cluster is not None
        self.cluster.kill(i)

    def restart_nats_node(self, i: int) -> None:
        """Start node ``i`` again on its ports and store; returns once its JetStream is healthy."""
        assert self.cluster is not None
        self.cluster.restart(i)

    def alive(self) -> dict[str, bool]:
        return {name: c.alive for name, c in self.children.items()}

    # ------------------------------------------------------------------ clients

    @contextlib.asynccontextmanager
    async def client(self, key: str | None = None, *, timeout: float = 600) -> AsyncIterator[Any]:
        """An MCP client over Streamable HTTP with the stack's key."""
        import httpx2
        from mcp import Client
        from mcp.client.streamable_http import streamable_http_client

        headers = {"Authorization": f"Bearer {key or self.key}"}
        async with (
            httpx2.AsyncClient(headers=headers, timeout=timeout) as http,
            Client(streamable_http_client(self.url, http_client=http)) as client,
        ):
            yield client

    @contextlib.asynccontextmanager
    async def bus(self) -> AsyncIterator[Bus]:
        assert self.settings is not None
        async with await Bus.for_settings(self.settings, name="chaos-probe") as b:
            yield b

    def replace_settings(self, **changes: Any) -> Settings:
        assert self.settings is not None
        return msgspec.structs.replace(self.settings, **changes)
