"""Usage from Messages API responses: an incremental SSE reader and a JSON reader.

The SSE reader is fed the raw bytes exactly as they are passed on to the client; it
never holds more than the current unfinished event. It decodes only the events that
matter (``message_start``, ``message_delta``, ``message_stop``, ``error``, and text
deltas when a text callback is given) and skips the rest with a substring test.

Usage rules (as the API documents them): ``message_start.message.usage`` holds the input
side (input, cache write, cache read tokens) and a first output count;
``message_delta.usage`` counts are cumulative and replace earlier values.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from bus import Usage

__all__ = ["SseUsageReader", "read_json_message"]

MAX_EVENT_BYTES = 16 * 1024 * 1024


class _Usage(msgspec.Struct):
    input_tokens: int | None = None
    output_tokens: int | None = None
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None


class _Message(msgspec.Struct):
    model: str | None = None
    usage: _Usage | None = None
    stop_reason: str | None = None


class _Delta(msgspec.Struct):
    type: str | None = None
    text: str | None = None
    stop_reason: str | None = None


class _Error(msgspec.Struct):
    type: str | None = None
    message: str | None = None


class _Event(msgspec.Struct):
    type: str = ""
    message: _Message | None = None
    usage: _Usage | None = None
    delta: _Delta | None = None
    error: _Error | None = None


_decode_event = msgspec.json.Decoder(_Event).decode
_decode_message = msgspec.json.Decoder(_Message).decode

_INTERESTING = (b"message_start", b"message_delta", b"message_stop", b'"error"')


class SseUsageReader:
    """Feed it the response bytes; read ``usage``, ``stop_reason``, ``completed``."""

    __slots__ = ("_buf", "_counts", "_on_text", "broken", "completed", "error", "model", "stop_reason")

    def __init__(self, on_text: Callable[[str], None] | None = None) -> None:
        self._buf = b""
        self._on_text = on_text
        self._counts: dict[str, int] = {}
        self.model: str | None = None
        self.stop_reason: str | None = None
        self.completed = False
        self.error: str | None = None
        self.broken = False

    @property
    def started(self) -> bool:
        return bool(self._counts)

    @property
    def usage(self) -> Usage | None:
        """Usage seen so far; None before ``message_start``."""
        if not self._counts:
            return None
        return Usage(**self._counts)

    def feed(self, chunk: bytes) -> None:
        if self.broken:
            return
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            buf = buf.replace(b"\r\n", b"\n")
        start = 0
        while True:
            end = buf.find(b"\n\n", start)
            if end < 0:
                break
            self._event(buf[start:end])
            start = end + 2
        self._buf = buf[start:]
        if len(self._buf) > MAX_EVENT_BYTES:
            self.broken = True
            self._buf = b""

    def _event(self, block: bytes) -> None:
        wants_text = self._on_text is not None and b"text_delta" in block
        if not wants_text and not any(marker in block for marker in _INTERESTING):
            return
        data = b"\n".join(line[5:].removeprefix(b" ") for line in block.split(b"\n") if line.startswith(b"data:"))
        if not data:
            return
        try:
            event = _decode_event(data)
        except msgspec.DecodeError:
            return
        kind = event.type
        if kind == "content_block_delta":
            delta = event.delta
            if self._on_text is not None and delta is not None and delta.type == "text_delta" and delta.text:
                self._on_text(delta.text)
        elif kind == "message_start" and event.message is not None:
            self.model = event.message.model
            self._merge(event.message.usage)
            self._counts.setdefault("input_tokens", 0)
        elif kind == "message_delta":
            self._merge(event.usage)
            if event.delta is not None and event.delta.stop_reason is not None:
                self.stop_reason = event.delta.stop_reason
        elif kind == "message_stop":
            self.completed = True
        elif kind == "error":
            err = event.error
            self.error = f"{err.type}: {err.message}" if err is not None else "error"

    def _merge(self, usage: _Usage | None) -> None:
        if usage is None:
            return
        for name in _Usage.__struct_fields__:
            value = getattr(usage, name)
            if value is not None and value >= 0:
                self._counts[name] = value


def read_json_message(body: bytes) -> tuple[Usage | None, str | None, str | None]:
    """(usage, stop_reason, model) of a non-streaming Messages API response body."""
    try:
        message = _decode_message(body)
    except msgspec.DecodeError:
        return None, None, None
    usage = None
    if message.usage is not None:
        u = message.usage
        usage = Usage(
            input_tokens=max(0, u.input_tokens or 0),
            output_tokens=max(0, u.output_tokens or 0),
            cache_creation_input_tokens=max(0, u.cache_creation_input_tokens or 0),
            cache_read_input_tokens=max(0, u.cache_read_input_tokens or 0),
        )
    return usage, message.stop_reason, message.model
