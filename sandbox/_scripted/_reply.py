"""Turn a matched script turn (or the echo default) into a Messages API reply."""

from __future__ import annotations

import hashlib
import math
from typing import Any

import msgspec

from ._request import RequestView
from ._script import ErrorReply, Script, Turn

__all__ = ["Reply", "build_reply", "build_structured_reply", "error_body", "input_tokens_for"]

_encoder = msgspec.json.Encoder()


class Reply(msgspec.Struct, kw_only=True):
    """One assistant message, or an error, ready to be sent as JSON or SSE."""

    script: str
    turn: int | None
    model: str
    message_id: str
    content: list[dict[str, Any]] = msgspec.field(default_factory=list)
    stop_reason: str = "end_turn"
    usage: dict[str, int] = msgspec.field(default_factory=dict)
    error: ErrorReply | None = None
    delay_ms: int = 0
    chunk_delay_ms: int = 0
    chunk_chars: int = 24

    def message(self) -> dict[str, Any]:
        return {
            "id": self.message_id,
            "type": "message",
            "role": "assistant",
            "model": self.model,
            "content": self.content,
            "stop_reason": self.stop_reason,
            "stop_sequence": None,
            "usage": self.usage,
        }


def error_body(error_type: str, message: str) -> bytes:
    return _encoder.encode({"type": "error", "error": {"type": error_type, "message": message}})


def _ids(view: RequestView, script: str, turn: int | None) -> str:
    seed = f"{script}|{turn}|{view.reply}|{view.user_text}".encode()
    return hashlib.blake2s(seed, digest_size=12).hexdigest()


def _fill(value: Any, view: RequestView) -> Any:
    """Replace ``{prompt}``, ``{model}``, ``{reply}``, ``{cwd}`` in strings, also nested."""
    if isinstance(value, dict):
        return {k: _fill(v, view) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, view) for v in value]
    if not isinstance(value, str) or "{" not in value:
        return value
    if "{cwd}" in value:
        value = value.replace("{cwd}", view.cwd)
    return value.replace("{prompt}", view.user_text).replace("{model}", view.request.model).replace("{reply}", str(view.reply))


def _instance(schema: Any, key: str = "") -> Any:
    """A small value valid against a JSON schema (enough for Claude Code's side requests)."""
    if not isinstance(schema, dict):
        return None
    if "const" in schema:
        return schema["const"]
    if schema.get("enum"):
        return schema["enum"][0]
    for combo in ("anyOf", "oneOf", "allOf"):
        if schema.get(combo):
            return _instance(schema[combo][0], key)
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or "properties" in schema:
        props = schema.get("properties") or {}
        return {name: _instance(sub, name) for name, sub in props.items()}
    if kind == "array":
        return [_instance(schema["items"], key)] * schema.get("minItems", 0) if "items" in schema else []
    if kind == "string":
        return "Scripted session" if key in ("title", "name", "summary") else "scripted"
    if kind in ("integer", "number"):
        return schema.get("minimum", 0)
    if kind == "boolean":
        return False
    return None


def build_structured_reply(view: RequestView, schema: dict[str, Any]) -> Reply:
    """The reply to a structured-output side request (title, summary): JSON matching the schema."""
    text = _encoder.encode(_instance(schema)).decode()
    digest = _ids(view, "structured-output", None)
    output = _output_tokens(text, [])
    return Reply(
        script="structured-output",
        turn=None,
        model=view.request.model,
        message_id=f"msg_scripted_{digest}",
        content=[{"type": "text", "text": text}],
        usage={
            "input_tokens": view.input_tokens,
            "output_tokens": output,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
        },
    )


def _output_tokens(text: str, tools: list[dict[str, Any]]) -> int:
    size = len(text.encode())
    for block in tools:
        size += len(_encoder.encode(block["input"])) + len(block["name"])
    return max(1, math.ceil(size / 4))


def input_tokens_for(turn: Turn | None, view: RequestView) -> int:
    """What ``usage.input_tokens`` of this turn is, and so what count_tokens answers."""
    if turn is not None and turn.usage.input_tokens is not None:
        return turn.usage.input_tokens
    return view.input_tokens


def build_reply(script: Script, selected: tuple[int, Turn] | None, view: RequestView) -> Reply:
    """The reply to ``view`` from ``selected`` (None: echo the latest user text)."""
    index, turn = selected if selected is not None else (None, None)
    digest = _ids(view, script.name, index)
    reply = Reply(
        script=script.name,
        turn=index,
        model=script.model or view.request.model,
        message_id=f"msg_scripted_{digest}",
        chunk_chars=script.chunk_chars,
    )
    if turn is not None and turn.error is not None:
        reply.error = turn.error
        reply.delay_ms = turn.delay_ms
        return reply
    if turn is None:
        text = view.user_text or "(empty prompt)"
        tools: list[dict[str, Any]] = []
    else:
        text = _fill(turn.text, view)
        tools = [
            {
                "type": "tool_use",
                "id": use.id or f"toolu_{digest[:16]}{n:02d}",
                "name": use.name,
                "input": _fill(use.input, view),
            }
            for n, use in enumerate(turn.tool_use)
        ]
        reply.delay_ms = turn.delay_ms
        reply.chunk_delay_ms = turn.chunk_delay_ms
    scripted = turn.usage if turn is not None else None
    output = scripted.output_tokens if scripted and scripted.output_tokens is not None else None
    natural = _output_tokens(text, tools)
    output = natural if output is None else output
    stop = (turn.stop_reason if turn is not None else None) or ("tool_use" if tools else "end_turn")
    limit = view.request.max_tokens
    if limit is not None and output > limit:
        # Cut like the real API would: keep the first `limit` tokens of text, drop
        # tool calls that would be incomplete, and say so in the stop reason.
        keep = max(0, len(text) * limit // output) if output else 0
        text = text[: min(keep, limit * 4)]
        tools = []
        output = limit
        stop = "max_tokens"
    reply.content = ([{"type": "text", "text": text}] if text else []) + tools
    reply.stop_reason = stop
    reply.usage = {
        "input_tokens": input_tokens_for(turn, view),
        "output_tokens": output,
        "cache_creation_input_tokens": scripted.cache_creation_input_tokens if scripted else 0,
        "cache_read_input_tokens": scripted.cache_read_input_tokens if scripted else 0,
    }
    return reply
