"""Server-sent events of a streamed Messages API reply, in the order the real API sends them:
``message_start``, ``ping``, per block ``content_block_start`` / ``content_block_delta``
(``text_delta`` or ``input_json_delta``) / ``content_block_stop``, ``message_delta``
(stop reason and usage), ``message_stop``. Errors mid-stream are an ``error`` event."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from ._reply import Reply

__all__ = ["sse_event", "sse_events"]

_encoder = msgspec.json.Encoder()


def sse_event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n"


def _chunks(text: str, size: int) -> Iterator[str]:
    for start in range(0, len(text), size):
        yield text[start : start + size]


def sse_events(reply: Reply) -> Iterator[list[bytes]]:
    """Groups of events; the server flushes each group, waiting ``chunk_delay_ms`` between."""
    start = reply.message()
    start["content"] = []
    start["stop_reason"] = None
    start["usage"] = dict(reply.usage, output_tokens=1)
    yield [sse_event("message_start", {"type": "message_start", "message": start}), sse_event("ping", {"type": "ping"})]
    for index, block in enumerate(reply.content):
        if block["type"] == "text":
            opening: dict[str, Any] = {"type": "text", "text": ""}
            deltas = [{"type": "text_delta", "text": piece} for piece in _chunks(block["text"], reply.chunk_chars)]
        else:
            opening = {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}
            payload = _encoder.encode(block["input"]).decode()
            deltas = [{"type": "input_json_delta", "partial_json": ""}]
            deltas += [{"type": "input_json_delta", "partial_json": piece} for piece in _chunks(payload, reply.chunk_chars)]
        group = [sse_event("content_block_start", {"type": "content_block_start", "index": index, "content_block": opening})]
        for delta in deltas:
            group.append(sse_event("content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}))
            if reply.chunk_delay_ms:
                yield group
                group = []
        group.append(sse_event("content_block_stop", {"type": "content_block_stop", "index": index}))
        yield group
    yield [
        sse_event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
                "usage": reply.usage,
            },
        ),
        sse_event("message_stop", {"type": "message_stop"}),
    ]
