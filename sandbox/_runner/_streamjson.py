"""Claude Code's stream-json output, typed: the one parser of it (tasks, the warm pool's
start check and the ``claude-cli`` completion provider all read it through
``parse_line``).

Tolerant where Claude Code grows: fields we do not read are ignored, content blocks
of any type decode (``ContentBlock`` carries every field we read, all optional), and a
line whose ``type`` is not one of the Structs below is an ``Unrecognized`` line.
Strict where we rely on a field: a known line whose field has another JSON type than
declared (a tool_use ``id`` that is a number, ``num_turns`` that is a string) is
``Unrecognized`` as a whole, never half-read. These are Claude Code's wire types, not
taskbus's (those live in ``bus._messages``); the stream comes from inside the sandbox,
so nothing in it is trusted.
"""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = [
    "AssistantLine",
    "ContentBlock",
    "ControlResponseLine",
    "ResultLine",
    "StreamEventLine",
    "StreamLine",
    "SystemLine",
    "Unrecognized",
    "UserLine",
    "parse_line",
]


class ContentBlock(msgspec.Struct, kw_only=True):
    """One block of a message: ``text``, ``tool_use``, ``tool_result`` or any other type."""

    type: str = ""
    text: str = ""
    id: str = ""
    name: str = ""
    input: Any = None
    """A tool_use's input: read only when it is an object."""
    tool_use_id: str = ""
    content: Any = ""
    """A tool_result's output: a string or a list of blocks."""
    is_error: bool | None = None


class MessageBody(msgspec.Struct, kw_only=True):
    content: list[ContentBlock] | str = []


class _Line(msgspec.Struct, kw_only=True, tag_field="type"):
    pass


class SystemLine(_Line, tag="system"):
    subtype: str = ""
    claude_code_version: str = "?"
    model: str | None = None
    tools: list[str] = []


class AssistantLine(_Line, tag="assistant"):
    message: MessageBody | None = None
    parent_tool_use_id: str | None = None


class UserLine(_Line, tag="user"):
    message: MessageBody | None = None
    parent_tool_use_id: str | None = None


class ResultLine(_Line, tag="result"):
    subtype: str = ""
    is_error: bool | None = None
    result: str | None = None
    num_turns: int | None = None
    permission_denials: list[Any] | None = None


class ControlResponseBody(msgspec.Struct, kw_only=True):
    subtype: str = ""
    request_id: str = ""


class ControlResponseLine(_Line, tag="control_response"):
    response: ControlResponseBody | None = None


class Delta(msgspec.Struct, kw_only=True):
    type: str = ""
    text: str = ""


class StreamEvent(msgspec.Struct, kw_only=True):
    """A partial-message event (``--include-partial-messages``); only text deltas are read."""

    delta: Delta | None = None


class StreamEventLine(_Line, tag="stream_event"):
    event: StreamEvent | None = None


class Unrecognized(msgspec.Struct):
    """A line that is not a JSON object of a known type and shape (``json``: whether it
    was JSON at all)."""

    json: bool


StreamLine = SystemLine | AssistantLine | UserLine | ResultLine | ControlResponseLine | StreamEventLine

_decoder = msgspec.json.Decoder(StreamLine)


def parse_line(line: str | bytes) -> StreamLine | Unrecognized:
    """One line of stream-json. Never raises."""
    try:
        return _decoder.decode(line)
    except msgspec.ValidationError:
        return Unrecognized(json=True)
    except msgspec.DecodeError:
        return Unrecognized(json=False)


def parent_id(line: AssistantLine | UserLine) -> str:
    return line.parent_tool_use_id or ""


def blocks(line: AssistantLine | UserLine) -> list[ContentBlock]:
    """The line's content blocks (none when its content is a plain string)."""
    content = line.message.content if line.message is not None else []
    return content if isinstance(content, list) else []
