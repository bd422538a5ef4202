"""Driving the Claude Code CLI: its command line, the files that bind it to the policy,
and the translation of its stream-json output into bus events."""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, NamedTuple

from bus import Event, Log, Message, Policy, ToolCall, ToolResult, expand_grants, redact, redact_obj, tool_names

from ._streamjson import (
    AssistantLine,
    ControlResponseLine,
    ResultLine,
    SystemLine,
    Unrecognized,
    UserLine,
    blocks,
    parent_id,
    parse_line,
)

logger = logging.getLogger(__name__)

OPT_DIR = "/opt/taskbus"
MANAGED_SETTINGS = "/etc/claude-code/managed-settings.json"
GATEWAY_PORT = 8080
PREVIEW_CHARS = 2000
MAX_DENIALS = 20
HOOK_COMMAND = f"/usr/bin/python3 -I -S {OPT_DIR}/hook.py"


def hook_source() -> bytes:
    return resources.files(__package__).joinpath("pretooluse_hook.py").read_bytes()


def managed_settings() -> dict[str, Any]:
    """Highest-precedence settings: the hook always runs; nothing can switch it off.
    It runs isolated (``-I -S``: no PYTHON* variables, no site or user site, not the
    working folder on its path) from the read-only /opt/taskbus, by absolute path."""
    return {
        "hooks": {"PreToolUse": [{"matcher": "*", "hooks": [{"type": "command", "command": HOOK_COMMAND, "timeout": 30}]}]},
        "allowManagedHooksOnly": True,
        "disableAllHooks": False,
        "permissions": {"disableBypassPermissionsMode": "disable"},
        "cleanupPeriodDays": 1,
    }


def write_shared_files(opt_dir: Path, etc_dir: Path, forwarder: bytes) -> None:
    """Fill the folders mounted read-only at /opt/taskbus and /etc/claude-code. Their
    content is the same for every task, so one copy per runner serves all its sandboxes
    (and the mounts stay equal, which lets Docker hand out pre-warmed containers)."""
    for folder, files in (
        (opt_dir, {"hook.py": hook_source(), "forwarder.py": forwarder}),
        (etc_dir, {"managed-settings.json": json.dumps(managed_settings()).encode()}),
    ):
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        for name, data in files.items():
            tmp = folder / f".{name}.tmp"
            tmp.write_bytes(data)
            tmp.chmod(0o644)
            tmp.replace(folder / name)  # atomic: a running hook never reads half a file


def claude_argv(binary: str, policy: Policy, *, tools: list[str] | None = None) -> list[str]:
    """The CLI's command line; the prompt goes on stdin so no flag can swallow it.

    ``--tools`` names the built-in tools that exist for the task (``Bash(ls:*)`` needs
    ``Bash``; ``*`` is every tool of the installed Claude Code, never the literal ``*``,
    which the CLI ignores); ``--allowedTools`` gets the grants themselves, so a rule
    grant lets Claude Code run only the commands matching it."""
    grants = expand_grants(policy.tools if tools is None else tools)
    argv = [
        binary,
        "-p",
        "--output-format=stream-json",
        "--verbose",
        f"--model={policy.model}",
        f"--max-turns={policy.max_turns}",
        "--strict-mcp-config",
        "--no-session-persistence",
        # user-level agents and skills load only with the "user" source; a task without
        # catalog entries reads no settings file at all
        "--setting-sources=user" if policy.catalog else "--setting-sources=",
    ]
    argv.append("--tools=" + ",".join(tool_names(grants)))
    if grants:
        argv.append("--allowedTools=" + ",".join(grants))
    return argv


def first_message(description: str, *, model: str, started_model: str) -> bytes:
    """What a warm agent's stdin gets: the task's model (when it differs from the one it
    started with) as a ``set_model`` control request, then the task as the user message."""
    lines = []
    if model != started_model:
        lines.append({"type": "control_request", "request_id": "taskbus-model", "request": {"subtype": "set_model", "model": model}})
    lines.append({"type": "user", "message": {"role": "user", "content": description}})
    return b"".join(json.dumps(line).encode() + b"\n" for line in lines)


def claude_env(placeholder_key: str) -> dict[str, str]:
    """The CLI's environment. No task rule travels in it: the hook asks the runner."""
    return {
        "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{GATEWAY_PORT}",
        "ANTHROPIC_API_KEY": placeholder_key,
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "DISABLE_AUTOUPDATER": "1",
        "DISABLE_TELEMETRY": "1",
        "DISABLE_ERROR_REPORTING": "1",
        "CLAUDE_CODE_DISABLE_TERMINAL_TITLE": "1",
        "IS_SANDBOX": "1",
    }


@dataclass
class ClaudeOutcome:
    """What the final ``result`` line said (cost comes from the gateway, not from here)."""

    seen_result: bool = False
    is_error: bool = False
    subtype: str = ""
    result: str = ""
    turns: int = 0
    denials: list[dict[str, Any]] = field(default_factory=list)
    allowed_tools: tuple[str, ...] = ("*",)
    catalog: dict[str, str] = field(default_factory=dict)
    """``agent:<name>`` / ``skill:<name>`` -> catalog hash of what the task installed."""
    allowed_agents: tuple[str, ...] = ("*",)
    allowed_skills: tuple[str, ...] = ("*",)
    subagents: dict[str, str] = field(default_factory=dict)
    """Agent tool_use id -> the sub-agent it spawned (to attribute that sub-agent's calls)."""


def _preview(value: Any, secrets: tuple[str, ...]) -> str:
    if isinstance(value, list):
        value = "\n".join((block.get("text", "") if isinstance(block, dict) else str(block)) for block in value)
    text = value if isinstance(value, str) else json.dumps(value)
    if len(text) > PREVIEW_CHARS:
        text = text[:PREVIEW_CHARS] + f"... [{len(text) - PREVIEW_CHARS} more characters]"
    return redact(text, secrets)


def _invokes(name: str, tool_input: dict[str, Any], call_id: str, outcome: ClaudeOutcome) -> dict[str, str]:
    """What an Agent (sub-agent spawn) or Skill call invokes, with its catalog hash."""
    if name in ("Agent", "Task"):
        target = f"agent:{tool_input.get('subagent_type') or 'general-purpose'}"
        outcome.subagents[call_id] = target.split(":", 1)[1]
    elif name == "Skill":
        target = f"skill:{tool_input.get('skill') or tool_input.get('name') or ''}"
    else:
        return {}
    return {"invokes": target[:200], "invokes_sha256": outcome.catalog.get(target, "")}


class Draft(NamedTuple):
    """One event for ``TaskEvents.emit``: its class and fields (task id, seq and time are
    added when it is published)."""

    kind: type[Event]
    fields: dict[str, Any]


def translate(line: str, outcome: ClaudeOutcome, secrets: tuple[str, ...] = ()) -> list[Draft]:
    """One stream-json line -> the task events it makes (``Draft``s for ``TaskEvents.emit``). Never raises.

    The stream is written by a process inside the sandbox, so anything in it may be
    forged: it never yields a ``security`` event (those come from the hook's socket and
    the gateway only); refused calls it reports become log lines."""

    raw = [Draft(Log, {"stream": "stdout", "line": redact(line[:PREVIEW_CHARS], secrets)})]
    parsed = parse_line(line)
    if isinstance(parsed, Unrecognized):
        return raw if parsed.json or line.strip() else []
    out: list[Draft] = []
    if isinstance(parsed, SystemLine):
        if parsed.subtype != "init":
            return raw
        text = f"claude {parsed.claude_code_version} started: model {parsed.model}, tools {','.join(parsed.tools)}"
        out.append(Draft(Log, {"stream": "runner", "line": text}))
    elif isinstance(parsed, AssistantLine):
        parent = parent_id(parsed)
        for block in blocks(parsed):
            if block.type == "text" and block.text:
                out.append(Draft(Message, {"text": redact(block.text, secrets)}))
            elif block.type == "tool_use":
                tool_input = block.input if isinstance(block.input, dict) else {}
                call = {
                    "id": block.id,
                    "name": block.name,
                    "input": redact_obj(tool_input, secrets),
                    "parent_id": parent,
                    "agent": outcome.subagents.get(parent, "") if parent else "",
                }
                call.update(_invokes(block.name, tool_input, block.id, outcome))
                out.append(Draft(ToolCall, call))
    elif isinstance(parsed, UserLine):
        parent = parent_id(parsed)
        for block in blocks(parsed):
            if block.type == "tool_result":
                output = _preview(block.content, secrets)
                out.append(
                    Draft(ToolResult, {"id": block.tool_use_id, "is_error": bool(block.is_error), "output": output, "parent_id": parent})
                )
    elif isinstance(parsed, ControlResponseLine):  # the answer to a warm agent's set_model
        if parsed.response is None or parsed.response.subtype != "success":
            return raw
    elif isinstance(parsed, ResultLine):
        outcome.seen_result = True
        outcome.is_error = bool(parsed.is_error)
        outcome.subtype = parsed.subtype
        outcome.result = redact(parsed.result or "", secrets)
        outcome.turns = parsed.num_turns or 0
        for denial in (parsed.permission_denials or [])[:MAX_DENIALS]:
            if len(outcome.denials) < MAX_DENIALS:  # repeated result lines stay bounded too
                outcome.denials.append(denial)
            out.append(
                Draft(Log, {"stream": "stdout", "line": "claude code reports a refused call: " + redact(json.dumps(denial)[:500], secrets)})
            )
    else:  # a partial-message event: not asked for with tasks
        return raw
    return out
