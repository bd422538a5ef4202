"""Every wire message of taskbus, as msgspec Structs. No other module defines one.

Rules (schema evolution): new fields go last with a default; a field never changes
type; a breaking change gets a new tag or subject. All Structs are frozen and
keyword-only. Tagged unions use the ``type`` field (events, submit replies) or the
``kind`` field (requests).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal, TypeAlias, get_args

import msgspec

SCHEMA_VERSION = "1"

NonEmpty = Annotated[str, msgspec.Meta(min_length=1)]
Name = Annotated[str, msgspec.Meta(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9_.:*()-]+$")]
TaskId = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_-]{1,128}$")]
Count = Annotated[int, msgspec.Meta(ge=0)]
Money = Annotated[float, msgspec.Meta(ge=0)]
RelPath = Annotated[str, msgspec.Meta(min_length=1, max_length=1024)]


def utcnow() -> datetime:
    return datetime.now(UTC)


class Wire(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=False):
    """Base of every wire message (unknown fields are ignored for forward compatibility)."""


# --------------------------------------------------------------------------- requests


class ChatMessage(Wire):
    role: Literal["user", "assistant"]
    content: str


class InputFile(Wire):
    """A file placed in the task's workspace before the agent starts."""

    path: RelPath
    """Relative path inside the workspace; no absolute paths, no '..'."""
    content: str
    encoding: Literal["utf-8", "base64"] = "utf-8"


class CompleteRequest(Wire, tag="complete", tag_field="kind"):
    """A plain model completion."""

    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    system: str | None = None
    model: str = "auto"
    max_tokens: Annotated[int, msgspec.Meta(ge=1, le=128_000)] | None = None
    temperature: Annotated[float, msgspec.Meta(ge=0, le=1)] | None = None
    effort: Literal["low", "medium", "high"] | None = None
    cache: bool = False
    max_cost_usd: Money | None = None


class TaskRequest(Wire, tag="task", tag_field="kind"):
    """An agentic task run by Claude Code in a sandbox."""

    description: NonEmpty
    allow_tools: list[Name] | None = None
    allow_agents: list[Name] | None = None
    allow_skills: list[Name] | None = None
    files: list[InputFile] = []
    project: str | None = None
    timeout_s: Annotated[int, msgspec.Meta(ge=1)] | None = None
    max_cost_usd: Money | None = None
    model: str = "auto"
    max_turns: Annotated[int, msgspec.Meta(ge=1, le=1000)] | None = None
    effort: Literal["low", "medium", "high"] | None = None


Request: TypeAlias = CompleteRequest | TaskRequest


# --------------------------------------------------------------------------- catalog


CatalogKind = Literal["agent", "skill"]


class CatalogRef(Wire):
    """One catalog entry chosen for a task, pinned to its content hash."""

    kind: CatalogKind
    name: str
    sha256: str
    """Hex SHA-256 of the entry's bundle (what the runner fetches and checks)."""


class CatalogFile(Wire):
    path: str
    """Relative path inside the entry (``<name>.md`` for an agent, ``SKILL.md``... for a skill)."""
    data: bytes


class CatalogBundle(Wire):
    """The content of one catalog entry, stored in the catalog Object Store under its hash."""

    kind: CatalogKind
    name: str
    files: list[CatalogFile]
    """Sorted by path."""


class CatalogEntry(Wire):
    """The catalog's current version of one agent or skill (its KV index record)."""

    kind: CatalogKind
    name: str
    sha256: str
    description: str = ""
    files: list[str] = []
    size: Count = 0
    tools: list[str] = []
    """An agent's ``tools`` frontmatter (empty: it inherits the task's tools)."""
    model: str = ""
    updated_at: datetime = msgspec.field(default_factory=utcnow)
    updated_by: str = ""

    def ref(self) -> CatalogRef:
        return CatalogRef(kind=self.kind, name=self.name, sha256=self.sha256)


# --------------------------------------------------------------------------- policy and jobs


class Policy(Wire):
    """What one task may do: the request intersected with the caller's profile."""

    task_id: TaskId
    kind: Literal["complete", "task"]
    key_id: str
    """Display prefix of the caller's API key (never the key)."""
    profile: str
    model: str
    """The model the task runs with (after routing)."""
    models: list[str]
    """Every model the gateway lets this task call."""
    tools: list[str] = []
    agents: list[str] = []
    skills: list[str] = []
    cpus: float = 1.0
    memory_mb: int = 1024
    pids: int = 256
    disk_mb: int = 512
    timeout_s: int = 600
    max_cost_usd: Money = 0.0
    max_turns: int = 50
    network: Literal["none", "model-api"] = "model-api"
    fs_access: Literal["none", "readonly", "readwrite"] = "none"
    project_root: str | None = None
    issued_at: datetime = msgspec.field(default_factory=utcnow)
    routing_reason: str = ""
    nonce: str = ""
    """Random per job (signed): with the task id, what runners claim once (replays are refused)."""
    expires_at: datetime | None = None
    """Runners refuse the job after this (signed; TASKBUS_JOB_EXPIRY_S after issue). None = no expiry."""
    catalog: list[CatalogRef] = []
    """The catalog agents and skills installed for the task, each pinned to its hash."""


class Job(Wire):
    """What the server publishes on ``<prefix>.jobs.<kind>``; runners verify ``signature``."""

    task_id: TaskId
    policy: Policy
    request: Request
    signature: str
    """Hex HMAC-SHA256 over the canonical encoding of (task_id, policy, request)."""
    submitted_at: datetime = msgspec.field(default_factory=utcnow)
    retryable: bool = False


# --------------------------------------------------------------------------- events


class Usage(Wire):
    input_tokens: Count = 0
    output_tokens: Count = 0
    cache_creation_input_tokens: Count = 0
    cache_read_input_tokens: Count = 0

    def __add__(self, other: Usage) -> Usage:
        return Usage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_creation_input_tokens=self.cache_creation_input_tokens + other.cache_creation_input_tokens,
            cache_read_input_tokens=self.cache_read_input_tokens + other.cache_read_input_tokens,
        )


class EventBase(Wire):
    task_id: TaskId
    seq: Annotated[int, msgspec.Meta(ge=1)]
    """Per-task, gapless, from 1."""
    ts: datetime


class Accepted(EventBase, tag="accepted"):
    kind: Literal["complete", "task"]
    key_id: str
    profile: str
    model: str
    routing_reason: str = ""


class Started(EventBase, tag="started"):
    runner_id: str
    backend: str
    sandbox_id: str = ""
    warm: bool = False
    """True when the task got a warm agent (its sandbox and Claude Code were started
    before the job came); False when both were started for it (the cold path)."""


class Message(EventBase, tag="message"):
    text: str
    delta: bool = False
    """True for a streamed fragment of a completion."""


class ToolCall(EventBase, tag="tool_call"):
    id: str
    name: str
    input: dict[str, Any] = {}
    parent_id: str = ""
    """For a call a sub-agent made: the id of the ``Agent`` call that spawned it ("" for the main agent)."""
    agent: str = ""
    """For a call a sub-agent made: that sub-agent's name."""
    invokes: str = ""
    """``agent:<name>`` for a sub-agent spawn, ``skill:<name>`` for a skill invocation, else ""."""
    invokes_sha256: str = ""
    """The catalog hash of the agent or skill invoked ("" for built-ins and entries not installed)."""


class ToolResult(EventBase, tag="tool_result"):
    id: str
    is_error: bool = False
    output: str = ""
    """A preview; long outputs are truncated."""
    parent_id: str = ""
    """For the result of a sub-agent's call: the id of the ``Agent`` call that spawned it."""


class ModelCall(EventBase, tag="model_call"):
    model: str
    usage: Usage
    cost_usd: Money
    total_cost_usd: Money
    duration_ms: Count = 0
    status: int = 200
    stop_reason: str | None = None


class Security(EventBase, tag="security"):
    kind: str
    """e.g. forged_policy, tool_denied, blocked_command, path_denied, model_denied, auth_failure."""
    detail: str
    severity: Literal["info", "warning", "critical"] = "warning"


class Artifact(EventBase, tag="artifact"):
    path: str
    size: Count
    sha256: str
    object_key: str
    change: Literal["added", "modified"] = "added"


class Log(EventBase, tag="log"):
    line: str
    stream: Literal["stdout", "stderr", "runner"] = "stderr"


FinishedStatus = Literal["succeeded", "failed", "timeout", "cancelled", "budget_exceeded", "denied"]
FINISHED_STATUSES: tuple[str, ...] = get_args(FinishedStatus)


class Finished(EventBase, tag="finished"):
    status: FinishedStatus
    result: str = ""
    reason: str | None = None
    """Machine-readable detail, e.g. runner_lost, runner_shutdown, bad_signature."""
    usage: Usage = Usage()
    cost_usd: Money = 0.0
    duration_ms: Count = 0
    turns: Count = 0
    model: str | None = None
    diff: str | None = None


Event: TypeAlias = Accepted | Started | Message | ToolCall | ToolResult | ModelCall | Security | Artifact | Log | Finished
EVENT_TYPES: tuple[type[Wire], ...] = get_args(Event)


# --------------------------------------------------------------------------- submit replies


class SubmitAccepted(Wire, tag="accepted", tag_field="type"):
    task_id: TaskId
    events_subject: str


class SubmitRejected(Wire, tag="rejected", tag_field="type"):
    code: str
    message: str


SubmitReply: TypeAlias = SubmitAccepted | SubmitRejected


# --------------------------------------------------------------------------- control, heartbeat, audit


class Cancel(Wire, tag="cancel", tag_field="type"):
    task_id: TaskId
    reason: str = "cancelled by caller"


class Heartbeat(Wire):
    runner_id: str
    backend: str
    slots: Count
    running: list[str] = []
    version: str = ""
    host: str = ""
    pid: int = 0
    kinds: list[str] = []
    ts: datetime = msgspec.field(default_factory=utcnow)
    ready: bool = False
    """The runner's backend self-check passed: it can run sandboxed jobs (older runners: always false)."""
    problem: str = ""
    """Why it cannot yet, with the command that fixes it; "" when ready."""
    warm: int = 0
    """Idle warm sandboxes ready to hand out (the Docker warm pool) plus idle warm agents (both backends)."""
    warm_agents: dict[str, int] = {}
    """Idle warm agents per task class (``warm_class``: a short hash of the tools, limits,
    catalog and max turns a Claude Code was started with); they are counted in ``warm``."""


class AuditNotice(Wire):
    """Something the server or CLI did or refused, published on ``<prefix>.audit.<kind>``.

    kind: auth_failure, denied, budget_refused, concurrency_limit, rate_limited, invalid_input,
    malformed_message, message_too_large, not_found, cache_hit, key_created, key_revoked,
    key_rotated, profile_changed, profile_deleted, budget_changed, task_cancelled.
    """

    kind: str
    actor: str
    """Key display prefix, ``cli:<user>`` or ``server``."""
    ts: datetime = msgspec.field(default_factory=utcnow)
    task_id: str | None = None
    code: str | None = None
    detail: dict[str, Any] = {}


class ChainHead(Wire):
    """The audit log's latest hash, published so an outside party can anchor it."""

    row: Count
    hash: str
    ts: datetime = msgspec.field(default_factory=utcnow)
    writer: str = ""
    """The audit writer's name (``TASKBUS_AUDIT_WRITER_NAME``; empty for the default one):
    each named writer keeps its own copy of the log, and so its own chain."""


PUBLIC_TYPES: tuple[type, ...] = (
    CompleteRequest,
    TaskRequest,
    Policy,
    Job,
    *EVENT_TYPES,
    SubmitAccepted,
    SubmitRejected,
    Cancel,
    Heartbeat,
    AuditNotice,
    ChainHead,
)


def kind_of(request: CompleteRequest | TaskRequest) -> Literal["complete", "task"]:
    """The job kind of a request (its tag)."""
    return request.__struct_config__.tag  # type: ignore[return-value]  # msgspec types tags as str | int | None; these two are "complete" and "task"


__all__ = [
    "kind_of",
    "Wire",
    "ChatMessage",
    "InputFile",
    "CompleteRequest",
    "TaskRequest",
    "Policy",
    "Job",
    "CatalogKind",
    "CatalogRef",
    "CatalogFile",
    "CatalogBundle",
    "CatalogEntry",
    "Usage",
    "EventBase",
    "Accepted",
    "Started",
    "Message",
    "ToolCall",
    "ToolResult",
    "ModelCall",
    "Security",
    "Artifact",
    "Log",
    "Finished",
    "SubmitAccepted",
    "SubmitRejected",
    "Cancel",
    "Heartbeat",
    "AuditNotice",
    "ChainHead",
    "Request",
    "Event",
    "SubmitReply",
    "EVENT_TYPES",
    "FINISHED_STATUSES",
    "FinishedStatus",
    "PUBLIC_TYPES",
    "SCHEMA_VERSION",
    "utcnow",
]
