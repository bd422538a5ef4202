"""Turning tasks, events and errors into MCP tool results and progress messages."""

from __future__ import annotations

import json
import logging
import mimetypes
from typing import Any

import mcp_types as types
import msgspec

from bus import (
    Artifact,
    Event,
    Finished,
    Log,
    Message,
    ModelCall,
    Security,
    Started,
    TaskbusError,
    ToolCall,
    ToolResult,
    redact,
)

logger = logging.getLogger(__name__)

INLINE_MAX_BYTES = 16_384
PREVIEW = 160

WHAT_TO_DO: dict[str, str] = {
    "failed": "Read the events resource for what went wrong, then retry with a clearer description.",
    "timeout": "Give it more time (timeout_s, within your profile's limit) or split the task.",
    "cancelled": "Submit it again if you still need it.",
    "budget_exceeded": "Raise max_cost_usd (within your profile's limit) or make the task smaller.",
    "denied": "The runner refused the job; ask an operator to check the server's job secret and logs.",
}


def events_uri(task_id: str) -> str:
    return f"taskbus://tasks/{task_id}/events"


def artifact_uri(task_id: str, path: str) -> str:
    return f"taskbus://tasks/{task_id}/artifacts/{path}"


def builtins(value: Any) -> Any:
    return msgspec.to_builtins(value, enc_hook=str)


def error_result(exc: BaseException) -> types.CallToolResult:
    """An ``is_error`` result: the code, what was wrong, what to do. Never a traceback or secret."""
    if isinstance(exc, TaskbusError):
        code, text = exc.code, redact(exc.describe())
    else:
        logger.error("tool failed unexpectedly", exc_info=exc)
        code, text = "internal_error", "The server failed unexpectedly (logged on the server). Retry; tell the operator if it persists."
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=f"[{code}] {text}")],
        structured_content={"error": {"code": code, "message": text}},
        is_error=True,
    )


def finished_error(structured: dict[str, Any], finished: Finished) -> types.CallToolResult:
    """A completion that ended other than ``succeeded``: its status is the error code."""
    why = f" ({finished.reason})" if finished.reason else ""
    text = redact(
        f"[{finished.status}] the completion ended {finished.status}{why}: "
        f"{finished.result or 'no detail'}. {WHAT_TO_DO.get(finished.status, '')}".strip()
    )
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=text)],
        structured_content={**structured, "error": {"code": finished.status, "message": text}},
        is_error=True,
    )


def progress_message(event: Event, *, cost: float, elapsed: float) -> str | None:
    """One line for an MCP progress notification, or None for events not worth one."""
    text = event_summary(event)
    return None if text is None else f"{text} [${cost:.4f}, {elapsed:.0f}s]"


def event_summary(event: Event) -> str | None:
    """What an event says in a few words (redacted), or None for events not worth a line
    (streamed text deltas, accepted)."""
    match event:
        case Started():
            text = f"started on {event.runner_id} ({event.backend}{', warm agent' if event.warm else ''})"
        case Message():
            if event.delta:
                return None
            text = "assistant: " + _clip(event.text)
        case ToolCall():
            args = ", ".join(f"{k}={_clip(str(v), 60)}" for k, v in list(event.input.items())[:3])
            text = f"tool call {event.name}({args})"
        case ToolResult():
            text = ("tool error: " if event.is_error else "tool result: ") + _clip(event.output, 80)
        case ModelCall():
            text = f"model call {event.model}: {event.usage.output_tokens} output tokens"
        case Artifact():
            text = f"artifact {event.path} ({event.size} bytes)"
        case Security():
            text = f"security {event.kind}: {_clip(event.detail)}"
        case Log():
            text = "log: " + _clip(event.line, 100)
        case Finished():
            text = f"finished: {event.status}"
        case _:
            return None
    return redact(text)


def _clip(text: str, limit: int = PREVIEW) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def finished_summary(finished: Finished) -> dict[str, Any]:
    return {
        "status": finished.status,
        "result": finished.result,
        "reason": finished.reason,
        "usage": builtins(finished.usage),
        "cost_usd": finished.cost_usd,
        "duration_ms": finished.duration_ms,
        "turns": finished.turns,
    }


def artifact_entries(task_id: str, artifacts: list[Artifact]) -> list[dict[str, Any]]:
    return [{"path": a.path, "size": a.size, "sha256": a.sha256, "uri": artifact_uri(task_id, a.path)} for a in artifacts]


def task_result(
    structured: dict[str, Any],
    finished: Finished,
    artifacts: list[Artifact],
    inline: dict[str, str],
) -> types.CallToolResult:
    """The result of a finished ``run_task``: summary text, resource links, small text files inline."""
    task_id = structured["task_id"]
    lines = [f"Task {task_id} {finished.status} (${finished.cost_usd:.4f}, {finished.duration_ms / 1000:.1f}s)."]
    if finished.status != "succeeded":
        why = f" ({finished.reason})" if finished.reason else ""
        lines.append(f"Why{why}: {finished.result or 'no result text'}. {WHAT_TO_DO.get(finished.status, '')}")
    elif finished.result:
        lines.append(finished.result)
    if artifacts:
        lines.append(f"{len(artifacts)} file(s) produced; read them as resources: " + ", ".join(a.path for a in artifacts))
    content: list[Any] = [types.TextContent(type="text", text=redact("\n".join(lines)))]
    for a in artifacts:
        uri = artifact_uri(task_id, a.path)
        mime = mimetypes.guess_type(a.path)[0] or "application/octet-stream"
        content.append(types.ResourceLink(type="resource_link", uri=uri, name=a.path, mime_type=mime, size=a.size))
        if a.path in inline:
            content.append(
                types.EmbeddedResource(
                    type="resource",
                    resource=types.TextResourceContents(
                        uri=uri, mime_type=mime if mime.startswith("text") else "text/plain", text=inline[a.path]
                    ),
                )
            )
    return types.CallToolResult(content=content, structured_content=structured, is_error=finished.status != "succeeded")


def json_result(document: dict[str, Any], text: str | None = None) -> types.CallToolResult:
    body = text if text is not None else json.dumps(document, indent=2, default=str)
    return types.CallToolResult(content=[types.TextContent(type="text", text=body)], structured_content=document)
