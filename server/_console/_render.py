"""Plain-text and HTML fragments the console's pages share (everything user-controlled is
escaped by the page that renders it)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import msgspec
from starlette.responses import HTMLResponse

from bus import (
    Accepted,
    Artifact,
    Event,
    Finished,
    Message,
    ModelCall,
    Security,
    Started,
    ToolCall,
    ToolResult,
)
from profiles import TaskRecord

from .._dispatch import FINAL
from ._html import SECURITY_HEADERS, url

SUMMARY_CHARS = 4000


def html_response(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def duration_text(record: TaskRecord) -> str:
    end = record.finished_at or (None if record.status in FINAL else datetime.now(UTC))
    if end is None:
        return ""
    return f"{(end - record.created_at).total_seconds():.1f} s"


def cost_text(value: float | None) -> str:
    return "" if value is None else f"${value:.4f}"


def event_summary(event: Event) -> str:
    """What one event says, as plain text (escaped by whoever renders it)."""
    if isinstance(event, Message):
        text = event.text
    elif isinstance(event, ToolCall):
        text = f"{event.name} {json.dumps(event.input, ensure_ascii=False)}"
    elif isinstance(event, ToolResult):
        text = ("error: " if event.is_error else "") + event.output
    elif isinstance(event, ModelCall):
        u = event.usage
        text = (
            f"{event.model}: in {u.input_tokens}, out {u.output_tokens}, cache {u.cache_creation_input_tokens}/"
            f"{u.cache_read_input_tokens} tokens, ${event.cost_usd:.6f} (total ${event.total_cost_usd:.6f})"
        )
    elif isinstance(event, Security):
        text = f"[{event.severity}] {event.kind}: {event.detail}"
    elif isinstance(event, Started):
        text = f"runner {event.runner_id} ({event.backend}), sandbox {event.sandbox_id}"
    elif isinstance(event, Accepted):
        text = f"{event.kind} for {event.key_id} ({event.profile}) on {event.model} — {event.routing_reason}"
    elif isinstance(event, Artifact):
        text = f"{event.path} ({event.size} bytes, {event.change})"
    elif isinstance(event, Finished):
        text = (
            f"{event.status}{' (' + event.reason + ')' if event.reason else ''}, ${event.cost_usd:.6f}, "
            f"{event.duration_ms} ms, {event.turns} turns"
        )
    else:
        fields = msgspec.to_builtins(event)
        for name in ("task_id", "seq", "ts", "type"):
            fields.pop(name, None)
        text = json.dumps(fields, ensure_ascii=False)
    return text[:SUMMARY_CHARS]


def artifact_href(task_id: str, path: str) -> str:
    return url(f"/console/tasks/{task_id}/artifacts/{path}")


def json_text(data: Any) -> str:
    """JSON with no raw ``<``, ``>`` or ``&`` (the browser parses it; it is never markup)."""
    text = json.dumps(data, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def event_type(event: Event) -> str:
    return str(msgspec.to_builtins(event).get("type", type(event).__name__.lower()))


def window_text(used: float, limit: float | None) -> str:
    return f"${used:.4f}" + (f" / ${limit:g}" if limit is not None else " (no budget)")


def limit_text(value: float | None) -> str:
    return "" if value is None else f"${value:g}"
