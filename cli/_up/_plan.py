"""What ``taskbus up`` will run: the children, their environment, ports and labels.

Children get all their configuration through ``TASKBUS_*`` variables, so every process
builds the same Settings. The environment given here is the CLI's own (the entry point
is the only place that reads ``os.environ``).
"""

from __future__ import annotations

import logging
import os
import shutil
import socket
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path

import msgspec

from bus import Settings, TaskbusError, credentials_path, find_nats_server, free_port, private_dir, server_authorization, write_config

from ._ready import RunnerReadyProbe
from ._readyfile import ready_file_path
from ._state import UP_PID_VAR
from ._supervisor import ChildSpec, UpError, port_free, ready_file_probe, tcp_probe

logger = logging.getLogger(__name__)

OFFLINE_LABEL = "offline scripted model"
DEFAULT_NATS_PORT = 4222
MCP_PATH = "/mcp"


@dataclass(frozen=True, kw_only=True)
class Plan:
    settings: Settings
    specs: list[ChildSpec]
    backend: str
    nats_url: str
    nats_embedded: bool
    model_url: str
    """The scripted model's URL when offline, else ""."""
    upstream: str
    """What the runner talks to, for display (never a key)."""
    http_host: str
    http_port: int
    runner_id: str
    runner_metrics_port: int = 0
    nats_credentials: str = ""
    """The operator's (cli role) credentials file for the embedded NATS; "" with an external one."""

    def client_settings(self) -> Settings:
        """Settings a CLI-side client of this stack (the supervisor, its panel) connects with."""
        return msgspec.structs.replace(
            self.settings, nats_url=self.nats_url, nats_credentials=self.nats_credentials or self.settings.nats_credentials
        )

    @property
    def offline(self) -> bool:
        return bool(self.model_url)

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.http_host in ("0.0.0.0", "") else self.http_host
        return f"http://{host}:{self.http_port}"

    @property
    def mcp_url(self) -> str:
        return f"{self.base_url}{MCP_PATH}"


def taskbus_command() -> list[str]:
    """How to run this taskbus in a child: the console script next to our Python."""
    script = Path(sys.executable).parent / "taskbus"
    if script.is_file():
        return [str(script)]
    found = shutil.which("taskbus")
    return [found] if found else [sys.executable, "-c", "from cli import main; main()"]


def choose_backend(settings: Settings, asked: str | None, env: dict[str, str]) -> str:
    """--backend wins, then TASKBUS_SANDBOX_BACKEND, then bwrap if installed, else docker."""
    if asked:
        return asked
    if "TASKBUS_SANDBOX_BACKEND" in env:
        return settings.sandbox_backend
    return "bwrap" if shutil.which("bwrap") else "docker"


def _pick_port(host: str, wanted: int, what: str, *, fallback_free: bool) -> int:
    if wanted == 0:
        return free_port(host)
    if port_free(host, wanted):
        return wanted
    if fallback_free:
        return free_port(host)
    raise UpError(f"{what} port {wanted} on {host} is taken; stop what uses it or pick another with --port")


def up_runner_id(runner_id: str | None = None) -> str:
    """The id of ``taskbus up``'s runner: ``--runner-id``, else ``up-<host>``."""
    return runner_id or f"up-{socket.gethostname().split('.')[0]}"


def make_plan(
    settings: Settings,
    env: dict[str, str],
    *,
    backend: str | None = None,
    nats_port: int = DEFAULT_NATS_PORT,
    http_port: int | None = None,
    runner_id: str | None = None,
) -> Plan:
    """Decide ports, backend and upstream, and build every child's command line."""
    data = settings.data_path.resolve()
    cmd = [*taskbus_command(), "--log-format", "json", "--log-level", settings.log_level]
    chosen = choose_backend(settings, backend, env)
    http_host = settings.http_host
    port = _pick_port(http_host, settings.http_port if http_port is None else http_port, "MCP HTTP", fallback_free=False)
    child_env = dict(env)  # every TASKBUS_* variable the user set reaches the children
    child_env.update(
        {
            "TASKBUS_DATA_DIR": str(data),
            "TASKBUS_SANDBOX_BACKEND": chosen,
            "TASKBUS_HTTP_HOST": http_host,
            "TASKBUS_HTTP_PORT": str(port),
            "PYTHONUNBUFFERED": "1",
            UP_PID_VAR: str(os.getpid()),
            "COLUMNS": "200",
        }
    )
    child_env.pop("TASKBUS_API_KEY", None)  # the server authenticates callers; it acts as nobody
    try:
        from sandbox import find_claude  # noqa: PLC0415 (importing sandbox adds ~190 ms to every CLI start; only `up` needs it)

        child_env.setdefault("TASKBUS_CLAUDE_PATH", str(find_claude(settings)))
    except Exception as exc:  # noqa: BLE001 - only a hint; the runner itself says what is missing
        logger.debug("Claude Code CLI not resolved here (%s); the runner looks for it", exc)

    specs: list[ChildSpec] = []
    nats_url = settings.nats_url
    if not nats_url:
        try:
            binary = find_nats_server()
        except TaskbusError as exc:
            raise UpError(exc.describe()) from None
        nport = _pick_port("127.0.0.1", nats_port, "NATS", fallback_free=True)
        store = private_dir(data / "nats", tighten=True)
        config = write_config(
            store / "nats-server.conf",
            host="127.0.0.1",
            port=nport,
            store_dir=store,
            max_payload=max(8 * 1024 * 1024, settings.max_message_bytes),
            name=f"taskbus-up-{uuid.uuid4().hex[:8]}",
            authorization=server_authorization(data, settings.subject_prefix),
        )
        nats_url = f"nats://127.0.0.1:{nport}"
        specs.append(
            ChildSpec(
                name="nats",
                argv=[binary, "-c", str(config)],
                env=_without_creds(child_env),
                label="embedded, JetStream in data dir",
                probe=tcp_probe("127.0.0.1", nport),
                stop_timeout_s=10.0,
            )
        )
    child_env["TASKBUS_NATS_URL"] = nats_url
    embedded = not settings.nats_url

    def env_of(role: str) -> dict[str, str]:
        """The children's environment with ``role``'s NATS credentials (a file path, never the password)."""
        if not embedded:
            return child_env  # an operator-run NATS: whatever TASKBUS_NATS_CREDENTIALS the user set
        return {**child_env, "TASKBUS_NATS_CREDENTIALS": str(credentials_path(data, role))}

    model_url = ""
    upstream = settings.upstream_url or ("https://api.anthropic.com" if settings.upstream_api_key else "")
    if not settings.upstream_url and not settings.upstream_api_key:
        mport = free_port("127.0.0.1")
        model_url = f"http://127.0.0.1:{mport}"
        upstream = f"{model_url} ({OFFLINE_LABEL})"
        child_env["TASKBUS_UPSTREAM_URL"] = model_url
        specs.append(
            ChildSpec(
                name="model",
                argv=[*cmd, "model", "serve", "--host", "127.0.0.1", "--port", str(mport)],
                env=_without_creds(child_env),
                label=OFFLINE_LABEL,
                probe=tcp_probe("127.0.0.1", mport),
                stop_timeout_s=5.0,
                wave=1,
            )
        )

    rid = up_runner_id(runner_id)
    probe_settings = msgspec.structs.replace(
        settings,
        nats_url=nats_url,
        nats_credentials=str(credentials_path(data, "cli")) if embedded else settings.nats_credentials,
    )
    metrics_port = settings.runner_metrics_port or free_port("127.0.0.1")
    runner_env = {
        **env_of("runner"),
        "TASKBUS_RUNNER_METRICS_PORT": str(metrics_port),
        # warm agents on: after the first task of a class (the demo's too), the next one
        # takes a sandbox whose Claude Code is already started (docs/runner.md#warm-agents)
        "TASKBUS_WARM_AGENTS_PER_CLASS": str(max(1, settings.warm_agents_per_class)),
    }
    audit_ready = ready_file_path(data, "audit")
    specs.append(
        ChildSpec(
            name="audit",
            argv=[*cmd, "audit", "run", "--ready-file", str(audit_ready)],
            env=env_of("audit"),
            label="hash-chained log in data dir",
            probe=ready_file_probe(audit_ready),
            stop_timeout_s=10.0,
            wave=1,
        )
    )
    specs.append(
        ChildSpec(
            name="runner",
            argv=[*cmd, "runner", "--id", rid, "--backend", chosen, "--grace", "5"],
            env=runner_env,
            label=f"{chosen} sandboxes",
            probe=RunnerReadyProbe(probe_settings, rid),
            stop_timeout_s=20.0,
            wave=1,
        )
    )
    specs.append(
        ChildSpec(
            name="server",
            argv=[*cmd, "serve", "--transport", "http", "--host", http_host, "--port", str(port)],
            env=env_of("server"),
            label="MCP Streamable HTTP + NATS submit",
            probe=tcp_probe(http_host, port),
            stop_timeout_s=10.0,
            wave=1,
        )
    )
    return Plan(
        settings=settings,
        specs=specs,
        backend=chosen,
        nats_url=nats_url,
        nats_embedded=not settings.nats_url,
        model_url=model_url,
        upstream=upstream,
        http_host=http_host,
        http_port=port,
        runner_id=rid,
        nats_credentials=str(credentials_path(data, "cli")) if embedded else "",
        runner_metrics_port=metrics_port,
    )


def _without_creds(env: dict[str, str]) -> dict[str, str]:
    """For children that do not talk to NATS (nats-server itself, the model)."""
    return {k: v for k, v in env.items() if k != "TASKBUS_NATS_CREDENTIALS"}
