"""The parts of an Anthropic Messages API request the scripted model looks at."""

from __future__ import annotations

import math
import re
from typing import Any

import msgspec

__all__ = ["ApiRequest", "RequestView", "decode_request", "estimate_tokens"]

MARKER = re.compile(r"\[script:([A-Za-z0-9_.-]{1,64})\]")
REMINDER = re.compile(r"<system-reminder>.*?(?:</system-reminder>|\Z)", re.S)
"""Context Claude Code wraps into the user's message; not what the user wrote."""
CWD = re.compile(r"(?:Primary working directory|Working directory|cwd):\s*(/[^\s`'\"]*)")


class _Message(msgspec.Struct, frozen=True):
    role: str
    content: str | list[dict[str, Any]]


class ApiRequest(msgspec.Struct, frozen=True, kw_only=True):
    """Body of ``/v1/messages`` and ``/v1/messages/count_tokens`` (unknown fields ignored)."""

    model: str
    messages: list[_Message]
    max_tokens: int | None = None
    system: str | list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    stream: bool = False
    output_config: dict[str, Any] | None = None
    output_format: dict[str, Any] | None = None

    def output_schema(self) -> dict[str, Any] | None:
        """The JSON schema of a structured-output request (Claude Code's side requests)."""
        fmt = (self.output_config or {}).get("format") or self.output_format
        if isinstance(fmt, dict) and fmt.get("type") == "json_schema" and isinstance(fmt.get("schema"), dict):
            return fmt["schema"]
        return None


_decoder = msgspec.json.Decoder(ApiRequest)
_encoder = msgspec.json.Encoder()


def decode_request(body: bytes) -> ApiRequest:
    """Raises ``msgspec.DecodeError`` / ``ValidationError`` with a JSON path on bad input."""
    return _decoder.decode(body)


def estimate_tokens(*parts: Any) -> int:
    """Deterministic token estimate: bytes of the compact JSON encoding / 4, rounded up."""
    return max(1, math.ceil(len(_encoder.encode(parts)) / 4))


def _text_of(content: str | list[dict[str, Any]]) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(b.get("text", "") for b in content if b.get("type") == "text" and isinstance(b.get("text"), str))


def _user_words(content: str | list[dict[str, Any]]) -> str:
    """The text the user wrote: text blocks without Claude Code's ``<system-reminder>`` context."""
    return REMINDER.sub("", _text_of(content)).strip()


def _has_tool_result(content: str | list[dict[str, Any]]) -> bool:
    return isinstance(content, list) and any(b.get("type") == "tool_result" for b in content)


def _system_text(system: str | list[dict[str, Any]] | None) -> str:
    if system is None:
        return ""
    return _text_of(system)


class RequestView:
    """What matching needs, computed once per request."""

    __slots__ = ("request", "reply", "after_tool_result", "user_text", "marker", "_input_tokens")

    def __init__(self, request: ApiRequest) -> None:
        self.request = request
        # Claude Code also sends mid-conversation `system` messages: they are not turns.
        messages = [m for m in request.messages if m.role != "system"]
        self.reply = sum(1 for m in messages if m.role == "assistant")
        last = messages[-1] if messages else None
        self.after_tool_result = last is not None and last.role == "user" and _has_tool_result(last.content)
        # The latest text the user wrote: messages carrying tool results are not the prompt,
        # and the <system-reminder> blocks Claude Code adds to a prompt are not the user's.
        self.user_text = ""
        for message in reversed(messages):
            if message.role == "user" and not _has_tool_result(message.content):
                text = _user_words(message.content)
                if text:
                    self.user_text = text
                    break
        self.marker = self._find_marker()
        self._input_tokens: int | None = None

    def _find_marker(self) -> str | None:
        """``[script:NAME]`` in the latest user text that has one, else in the system prompt."""
        for message in reversed(self.request.messages):
            if message.role == "user":
                found = MARKER.search(_text_of(message.content))
                if found:
                    return found.group(1)
        found = MARKER.search(_system_text(self.request.system))
        return found.group(1) if found else None

    @property
    def cwd(self) -> str:
        """The agent's working directory as Claude Code states it in its prompts, else ``.``."""
        found = CWD.search(_system_text(self.request.system))
        if found is None:
            for message in self.request.messages:
                if message.role == "system":
                    found = CWD.search(_text_of(message.content))
                    if found:
                        break
        return found.group(1).rstrip(".,;") if found else "."

    @property
    def input_tokens(self) -> int:
        if self._input_tokens is None:
            r = self.request
            self._input_tokens = estimate_tokens(r.messages, r.system, r.tools)
        return self._input_tokens

    @property
    def tool_names(self) -> list[str]:
        return [str(t.get("name", "")) for t in self.request.tools or ()]
