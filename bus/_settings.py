"""Settings: one frozen Struct, built once at the entry point.

Sources, later ones win: defaults, ``taskbus.toml`` (the path in ``TASKBUS_CONFIG``,
else ``./taskbus.toml`` if present), then ``TASKBUS_<FIELD>`` environment variables.
``ANTHROPIC_API_KEY`` is accepted as a fallback for ``TASKBUS_UPSTREAM_API_KEY``.
Library code receives a Settings; it never reads the environment itself.
"""

from __future__ import annotations

import inspect
import os
import re
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from ._errors import ConfigError
from ._redact import safe_url

ENV_PREFIX = "TASKBUS_"
SECRET_FIELDS = frozenset({"upstream_api_key", "job_secret"})


class ModelPrice(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """USD per million tokens."""

    input: float
    output: float
    cache_write: float = 0.0
    cache_read: float = 0.0


DEFAULT_PRICES: dict[str, ModelPrice] = {
    "claude-opus-4-8": ModelPrice(input=5.0, output=25.0, cache_write=6.25, cache_read=0.5),
    "claude-sonnet-4-6": ModelPrice(input=3.0, output=15.0, cache_write=3.75, cache_read=0.3),
    "claude-haiku-4-5": ModelPrice(input=1.0, output=5.0, cache_write=1.25, cache_read=0.1),
}

Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
Positive = Annotated[int, msgspec.Meta(gt=0)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0)]
Prefix = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,32}$")]


def _default_data_dir() -> str:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return str(Path(base) / "taskbus")


def _default_image_cache_dir() -> str:
    if os.geteuid() == 0:
        return "/var/cache/taskbus"
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return str(Path(base) / "taskbus")


class Settings(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Everything configurable. Each field is ``TASKBUS_<NAME>`` in the environment."""

    # -- bus
    nats_url: str = ""
    """NATS server URL, or several servers of one cluster comma-separated (`nats://a:4222,nats://b:4222`; `tls://...` for TLS, see TASKBUS_NATS_TLS_CA); empty starts an embedded nats-server in the data dir."""
    subject_prefix: Prefix = "taskbus"
    """First token of every subject and prefix of stream names."""
    data_dir: str = msgspec.field(default_factory=_default_data_dir)
    """Where SQLite files, JetStream storage, secrets and caches live."""
    max_message_bytes: Positive = 1_048_576
    """Largest bus message accepted (submit requests, jobs)."""
    job_ack_wait_s: Positive = 30
    """A job not acked or kept alive within this is redelivered to another runner."""
    job_max_deliver: Positive = 5
    """How many times a job is delivered before JetStream gives up on it."""
    events_max_age_days: Positive = 30
    """How long task events stay in the TASKBUS_EVENTS stream."""
    # -- model upstream
    upstream_url: str = ""
    """Anthropic Messages API base URL; empty means https://api.anthropic.com when a key is set, else the offline scripted model."""
    upstream_api_key: str = ""
    """The real model credential. Only runners need it; it never enters a sandbox."""
    prices: dict[str, ModelPrice] = msgspec.field(default_factory=lambda: dict(DEFAULT_PRICES))
    """USD per million tokens by model (JSON in the environment)."""
    complete_provider: Literal["anthropic", "claude-cli"] = "anthropic"
    """How runners answer `complete` jobs: the Messages API directly, or `claude -p` with no tools in a sandbox."""
    default_model: str = "claude-sonnet-4-6"
    """Model used when a request names none and routing is off."""
    # -- security
    job_secret: str = ""
    """HMAC secret shared by server and runners; empty reads or creates <data_dir>/job_secret."""
    # -- sandbox
    sandbox_backend: Literal["bwrap", "docker"] = "bwrap"
    """Backend runners use for run_task."""
    sandbox_image: str = ""
    """Docker image tag for sandboxes; empty uses the image `taskbus sandbox build-image` made."""
    claude_path: str = ""
    """Path to the Claude Code CLI; empty looks in ./.tools/claude then PATH."""
    default_cpus: PositiveFloat = 1.0
    """CPU cores of a sandbox when the profile sets none."""
    default_memory_mb: Positive = 1024
    """Memory limit of a sandbox (MiB, no swap) when the profile sets none."""
    default_pids: Positive = 256
    """Process limit of a sandbox when the profile sets none."""
    default_disk_mb: Positive = 512
    """Workspace and tmpfs size of a sandbox (MiB) when the profile sets none."""
    default_timeout_s: Positive = 600
    """Wall-clock limit of a task (seconds) when the profile and request set none."""
    docker_warm_pool: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Pre-created Docker sandboxes kept ready per limit class (0 = off)."""
    artifact_max_bytes: Positive = 10_485_760
    """Largest single file stored as an artifact."""
    artifact_max_files: Positive = 200
    """Most files of one task stored as artifacts."""
    # -- runner
    runner_slots: Positive = 2
    """Tasks a runner runs at once."""
    heartbeat_s: PositiveFloat = 5.0
    """Seconds between runner heartbeats."""
    # -- server
    http_host: str = "127.0.0.1"
    """Address the MCP Streamable HTTP server listens on."""
    http_port: Port = 8765
    """Port of the MCP Streamable HTTP server."""
    api_key: str = ""
    """Key a stdio MCP server acts as (TASKBUS_API_KEY)."""
    # -- audit
    alert_command: str = ""
    """Shell command run for each alert, the alert JSON on stdin; empty = none."""
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    """Logging level of every taskbus process."""
    artifacts_store_max_bytes: Positive = 1024**3
    """Most bytes the artifacts Object Store holds in all (JetStream reserves them on its disk); when full, new artifacts are refused (the task fails) until old ones age out."""
    artifacts_store_max_age_days: PositiveFloat = 30.0
    """Artifacts are deleted from the Object Store this many days after they were stored."""
    auth_audit_window_s: PositiveFloat = 60.0
    """Failed authentications are audited at most twice per window per door and reason: the first at once, the rest as one row with their count."""
    gateway_extra_betas: list[str] = msgspec.field(default_factory=list)
    """`anthropic-beta` values the model gateway forwards beyond those Claude Code sends (JSON list); list only flags that do not change prices."""
    gateway_cache_read_credit: bool = True
    """Price the prompt prefix a task's previous call left in the cache at the cache-read rate in the pre-call cost check (a cache miss can then overshoot the cap by that prefix's cache-write premium, once)."""
    submit_idempotency_ttl_s: Positive = 86_400
    """How long an idempotency id (``Nats-Msg-Id`` on a NATS submit, ``idempotency_key`` on an
    MCP call) is remembered: a repeat within this many seconds gets the first request's reply
    instead of a second task. Set when the KV bucket is first created."""
    # -- sandbox image (per machine)
    image_cache_dir: str = msgspec.field(default_factory=_default_image_cache_dir)
    """Per-machine cache of the sandbox image and root filesystem, shared by every data dir: /var/cache/taskbus as root, else $XDG_CACHE_HOME/taskbus. Must be owned by root (or the runner's user) and writable by nobody else."""
    up_build_image: bool = True
    """`taskbus up` builds a missing sandbox image before it starts the runner (about 35 s, with progress); false stops with the command that builds it."""
    artifact_max_total_bytes: Positive = 104_857_600
    """Most bytes of one task stored as artifacts (all files together)."""
    workspace_max_entries: Positive = 20_000
    """Most workspace entries (files, folders, links) looked at when collecting artifacts."""
    task_max_events: Positive = 10_000
    """Most events a task's agent output (Claude Code's stream) may produce; past it the
    runner drops further output with one ``security`` event (``event_limit``) and the task
    runs on under its time and cost limits."""
    task_max_event_bytes: Positive = 16_777_216
    """Most bytes of events a task's agent output may produce (each event is also cut to
    64 KiB); past it, as past ``task_max_events``."""
    # -- metrics and console
    runner_metrics_host: str = "127.0.0.1"
    """Address a runner serves its Prometheus ``/metrics`` on."""
    runner_metrics_port: Port = 0
    """Port of a runner's Prometheus ``/metrics``; 0 = not served (``taskbus up`` picks a free one)."""
    console: Literal["auto", "on", "off"] = "auto"
    """Web console at ``/console``: ``auto`` serves it only when the HTTP server binds to loopback;
    ``on`` also beyond loopback (put TLS in front); ``off`` never."""
    nats_credentials: str = ""
    """Path of a 0600 JSON file {"user": ..., "password": ...} this process connects to NATS with; empty = none (or the URL's). `taskbus up` sets it per child; CLI commands find the operator's in the data dir."""
    job_expiry_s: Positive = 86_400
    """A job not started within this many seconds of being signed is refused by runners (room for a queue wait when every runner is busy)."""
    catalog_max_file_bytes: Positive = 262_144
    """Largest single file of a catalog agent or skill (`taskbus agents add`, `taskbus skills add`)."""
    catalog_max_entry_bytes: Positive = 2_097_152
    """Most bytes of one catalog agent or skill (all its files together)."""
    catalog_max_files: Positive = 64
    """Most files (and folders) in one catalog skill."""
    nats_replicas: Annotated[int, msgspec.Meta(ge=1, le=5)] = 1
    """Replicas of every JetStream stream, KV bucket and Object Store taskbus creates; existing ones with fewer are raised to it at start-up. At most the number of JetStream servers in the NATS cluster (1 for a single server, 3 for the cluster in docs/multi-host.md)."""
    # -- warm agents (issue 18)
    warm_agents_per_class: Annotated[int, msgspec.Meta(ge=0)] = 0
    """Warm agents (a sandbox with Claude Code started and idle on stdin) a runner keeps ready per task class it saw recently; 0 (the default) turns them off; `taskbus up` uses 1."""
    warm_agents_total: Annotated[int, msgspec.Meta(ge=0)] = 2
    """Warm agents a runner keeps ready over all classes (never more than its slots)."""
    warm_agents_classes: Positive = 4
    """How many of the most recently used task classes a runner keeps warm."""
    warm_agents_memory_mb: Positive = 4096
    """Sum of the memory limits of a runner's idle warm agents; no refill past it."""
    warm_agent_max_idle_s: PositiveFloat = 600.0
    """An idle warm agent older than this is destroyed (and replaced while its class is in demand)."""
    audit_writer_name: Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{0,32}$")] = ""
    """Names this audit writer's durable consumers (`audit-events-<name>`, `audit-notices-<name>`): give every audit writer that keeps its own full copy of the log (another host, another database) a different name. Empty: `audit-events` and `audit-notices`."""
    task_retention_days: PositiveFloat = 30.0
    """How long a task's record (status, cost, summary: `get_task`, `list_tasks`) is kept after its last change; older ones expire (JetStream drops them) and `get_task` says the task expired. The ledger keeps its entries at least 32 days (a budget month). `taskbus serve` applies it to the buckets when it starts."""
    # -- NATS over TLS
    nats_tls_ca: str = ""
    """PEM file of the CA that signed the NATS servers' certificates (a private CA); set, every connection must be TLS, verified against it with the host name checked (TLS 1.2 or later). Empty: a `tls://` URL is verified against the system's CA store."""
    nats_tls_cert: str = ""
    """PEM client certificate this process presents to NATS (mutual TLS, `verify: true` or `verify_and_map` in the server's `tls {}` block); needs TASKBUS_NATS_TLS_KEY."""
    nats_tls_key: str = ""
    """PEM private key (unencrypted; keep it 0600) of TASKBUS_NATS_TLS_CERT."""

    def __repr__(self) -> str:
        parts = []
        for name in self.__struct_fields__:
            value = getattr(self, name)
            if name in SECRET_FIELDS and value:
                value = "***"
            elif name == "nats_url":
                value = safe_url(value)  # a password in the URL is not printed
            parts.append(f"{name}={value!r}")
        return f"Settings({', '.join(parts)})"

    __str__ = __repr__

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser()

    @property
    def image_cache_path(self) -> Path:
        return Path(self.image_cache_dir).expanduser()

    @classmethod
    def load(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        toml_path: str | os.PathLike[str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build Settings from a TOML file, the environment and explicit overrides.

        Raises ConfigError naming the variable (or TOML key) that is wrong.
        """
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = toml_path or env.get(ENV_PREFIX + "CONFIG")
        if path is None and Path("taskbus.toml").is_file():
            path = "taskbus.toml"
        if path:
            values.update(_read_toml(Path(path)))
        if env.get("ANTHROPIC_API_KEY") and not env.get(ENV_PREFIX + "UPSTREAM_API_KEY"):
            values["upstream_api_key"] = env["ANTHROPIC_API_KEY"]
        fields = {f.name: f for f in msgspec.structs.fields(cls)}
        for name, field in fields.items():
            raw = env.get(ENV_PREFIX + name.upper())
            if raw is None:
                continue
            values[name] = _convert_env(ENV_PREFIX + name.upper(), raw, field.type)
        values.update({k: v for k, v in overrides.items() if v is not None})
        for name, value in values.items():
            if name not in fields:
                raise ConfigError(name, f"unknown setting; known: {', '.join(sorted(fields))}")
            try:
                msgspec.convert({name: value}, _single_field_struct(cls, name), strict=False)
            except msgspec.ValidationError as exc:
                raise ConfigError(_origin(name, env), _problem(exc)) from None
        return msgspec.convert(values, cls, strict=False)


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), "config file not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    return data.get("taskbus", data)


def _convert_env(variable: str, raw: str, typ: Any) -> Any:
    origin = getattr(typ, "__origin__", typ)
    if origin in (dict, list):
        try:
            return msgspec.json.decode(raw)
        except msgspec.DecodeError as exc:
            raise ConfigError(variable, f"expected JSON: {exc}") from None
    return raw


_single_cache: dict[str, type] = {}


def _single_field_struct(cls: type[Settings], name: str) -> type:
    """A Struct with just one field of Settings, to validate values one at a time."""
    if name not in _single_cache:
        field = next(f for f in msgspec.structs.fields(cls) if f.name == name)
        _single_cache[name] = msgspec.defstruct("One", [(name, field.type)], kw_only=True)
    return _single_cache[name]


def _origin(name: str, env: Mapping[str, str]) -> str:
    var = ENV_PREFIX + name.upper()
    return var if var in env else name


def _problem(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    return text.split(" - at ")[0]


def settings_reference() -> list[tuple[str, str, str, str]]:
    """(variable, type, default, description) for every setting, for docs and tests."""
    source = inspect.getsource(Settings)
    docs = dict(re.findall(r"^    (\w+):[^\n]*\n    \"\"\"(.*?)\"\"\"", source, re.M | re.S))
    rows = []
    for field in msgspec.structs.fields(Settings):
        default = field.default
        if field.default_factory is not msgspec.NODEFAULT:
            default = "(computed)" if field.name in ("data_dir", "image_cache_dir") else "(built in)"
        if field.name in SECRET_FIELDS:
            default = '""'
        type_name = _type_name(field.type)
        rows.append(
            (
                ENV_PREFIX + field.name.upper(),
                type_name,
                repr(default) if isinstance(default, str) else str(default),
                " ".join(docs.get(field.name, "").split()),
            )
        )
    return rows


def _type_name(typ: Any) -> str:
    meta_origin = getattr(typ, "__origin__", None)
    if meta_origin is Annotated or type(typ).__name__ == "_AnnotatedAlias":
        return _type_name(typ.__origin__)
    if getattr(typ, "__origin__", None) is Literal:
        return " | ".join(repr(a) for a in typ.__args__)
    if isinstance(typ, type):
        return typ.__name__
    return str(typ).replace("typing.", "").replace("bus._settings.", "")
