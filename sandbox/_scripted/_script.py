"""Model scripts: what the scripted model server answers, loaded from TOML or JSON.

A script is a list of turns. Example (``sandbox/model_scripts/write-a-file.toml``)::

    name = "write-a-file"
    description = "One Bash tool call that writes hello.txt, then a final text."

    [[turns]]                       # reply 0: the first answer of the conversation
    text = "I'll write the file."
    tool_use = [{ name = "Bash", input = { command = "echo hello > hello.txt" } }]

    [[turns]]                       # reply 1: after the tool result came back
    after_tool_result = true
    text = "Done: wrote hello.txt"
    usage = { input_tokens = 1200, output_tokens = 12 }

Script fields:

- ``name`` (defaults to the file stem), ``description``.
- ``model``: the model name to report; default: echo the model the request asked for.
- ``models``: ids listed by ``GET /v1/models`` (default ``["claude-scripted"]``).
- ``repeat_last``: once the turns are used up, keep answering with the last one
  (``runaway``); otherwise an unmatched request gets the default echo reply.
- ``chunk_chars``: size of a text delta when streaming (default 24).
- ``turns``: the replies, tried in order; the first that matches answers.

Turn fields (every field optional, but a turn needs ``text``, ``tool_use`` or ``error``):

- ``text``: assistant text. ``{prompt}``, ``{model}`` and ``{reply}`` are replaced
  by the latest user text, the requested model and the reply number.
- ``tool_use``: list of ``{name, input, id?}`` blocks after the text; the stop
  reason becomes ``tool_use``.
- ``error``: ``{status, type?, message?, retry_after?, should_retry?}``: answer with an
  Anthropic error instead (400, 401, 403, 404, 413, 429, 500, 529, ...);
  ``should_retry`` sets the ``x-should-retry`` header SDK clients obey.
- ``at``: the reply number this turn answers (the count of assistant messages already
  in the request), or ``"any"``. Default: the turn's position in the list.
- ``after_tool_result``: only match when the last message does (true) or does not
  (false) hold a ``tool_result`` block.
- ``contains``: only match when the latest user text contains this string.
- ``delay_ms``: wait before the first byte; ``chunk_delay_ms``: wait between
  streamed chunks.
- ``usage``: ``{input_tokens, output_tokens, cache_creation_input_tokens,
  cache_read_input_tokens}`` to report. Missing input/output counts are computed
  deterministically (bytes / 4, rounded up) from the request and the reply.
- ``stop_reason``: override (``end_turn``, ``tool_use``, ``max_tokens``,
  ``stop_sequence``, ``pause_turn``, ``refusal``).
"""

from __future__ import annotations

import importlib.resources
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal

import msgspec

from bus import ConfigError

__all__ = [
    "ErrorReply",
    "Script",
    "ScriptLoadError",
    "ScriptUsage",
    "ToolUse",
    "Turn",
    "default_script",
    "load_script",
    "parse_script",
    "resolve_script",
    "shipped_scripts",
]

NonNegative = Annotated[int, msgspec.Meta(ge=0)]
Name = Annotated[str, msgspec.Meta(pattern=r"^[A-Za-z0-9_.-]{1,64}$")]
StopReason = Literal["end_turn", "tool_use", "max_tokens", "stop_sequence", "pause_turn", "refusal"]

ERROR_TYPES: dict[int, str] = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}


class ScriptLoadError(ConfigError):
    """A model script that cannot be read, parsed or validated."""

    code = "bad_script"
    hint = "See docs/scripted-model.md for the script format."

    def __init__(self, source: str, problem: str) -> None:
        super().__init__(source, problem)


class _Strict(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    pass


class ScriptUsage(_Strict, frozen=True):
    input_tokens: NonNegative | None = None
    output_tokens: NonNegative | None = None
    cache_creation_input_tokens: NonNegative = 0
    cache_read_input_tokens: NonNegative = 0


class ToolUse(_Strict, frozen=True):
    name: Annotated[str, msgspec.Meta(min_length=1)]
    input: dict[str, Any] = msgspec.field(default_factory=dict)
    id: str | None = None


class ErrorReply(_Strict, frozen=True):
    status: Annotated[int, msgspec.Meta(ge=400, le=599)] = 500
    type: str | None = None
    message: str = "scripted error"
    retry_after: NonNegative | None = None
    should_retry: bool | None = None

    @property
    def error_type(self) -> str:
        return self.type or ERROR_TYPES.get(self.status, "api_error")


class Turn(_Strict, frozen=True):
    text: str = ""
    tool_use: list[ToolUse] = msgspec.field(default_factory=list)
    error: ErrorReply | None = None
    at: NonNegative | Literal["any"] | None = None
    after_tool_result: bool | None = None
    contains: str | None = None
    delay_ms: NonNegative = 0
    chunk_delay_ms: NonNegative = 0
    usage: ScriptUsage = ScriptUsage()
    stop_reason: StopReason | None = None

    def __post_init__(self) -> None:
        if self.error is None and not self.text and not self.tool_use:
            raise ValueError("a turn needs `text`, `tool_use` or `error`")
        if self.error is not None and (self.text or self.tool_use):
            raise ValueError("a turn with `error` cannot also have `text` or `tool_use`")

    def matches(self, position: int, reply: int, after_tool_result: bool, user_text: str) -> bool:
        at = position if self.at is None else self.at
        if at != "any" and at != reply:
            return False
        if self.after_tool_result is not None and self.after_tool_result != after_tool_result:
            return False
        return self.contains is None or self.contains in user_text


class Script(_Strict, frozen=True):
    name: Name = "default"
    description: str = ""
    model: str | None = None
    models: list[str] = msgspec.field(default_factory=lambda: ["claude-scripted"])
    repeat_last: bool = False
    chunk_chars: Annotated[int, msgspec.Meta(ge=1)] = 24
    turns: list[Turn] = msgspec.field(default_factory=list)

    def select(self, reply: int, after_tool_result: bool, user_text: str) -> tuple[int, Turn] | None:
        """The first turn matching this request, with its index; None means: echo."""
        for index, turn in enumerate(self.turns):
            if turn.matches(index, reply, after_tool_result, user_text):
                return index, turn
        if self.repeat_last and self.turns:
            last = len(self.turns) - 1
            at = self.turns[last].at
            if (at is None and reply > last) or (isinstance(at, int) and reply > at):
                return last, self.turns[last]
        return None


def default_script() -> Script:
    """The script of a server started without one: every request gets the echo reply."""
    return Script(name="default", description="Echo the latest user text.")


def parse_script(data: bytes | str, *, source: str, name: str | None = None, fmt: str = "toml") -> Script:
    """Validate script text; errors name the line (syntax) or the field path (schema)."""
    if isinstance(data, bytes):
        try:
            data = data.decode()
        except UnicodeDecodeError as exc:
            raise ScriptLoadError(source, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if fmt == "json":
        try:
            raw = msgspec.json.decode(data)
        except msgspec.DecodeError as exc:
            raise ScriptLoadError(source, f"invalid JSON: {exc}") from None
    else:
        try:
            raw = tomllib.loads(data)
        except tomllib.TOMLDecodeError as exc:
            raise ScriptLoadError(source, f"invalid TOML: {exc}") from None
    if not isinstance(raw, dict):
        raise ScriptLoadError(source, "the script must be a table/object at the top level")
    if name and "name" not in raw:
        raw["name"] = name
    try:
        return msgspec.convert(raw, Script)
    except msgspec.ValidationError as exc:
        raise ScriptLoadError(source, _locate(str(exc), data if fmt == "toml" else "")) from None


def _locate(message: str, text: str) -> str:
    """Add the line of a ``$.turns[N]`` table in TOML to a msgspec validation message."""
    marker = "$.turns["
    start = message.find(marker)
    if start < 0 or not text:
        return message
    try:
        index = int(message[start + len(marker) : message.index("]", start)])
    except ValueError:
        return message
    seen = -1
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip().startswith("[[turns]]"):
            seen += 1
            if seen == index:
                return f"{message} (turn starting at line {number})"
    return message


def shipped_scripts() -> dict[str, Path]:
    """Scripts shipped in ``sandbox/model_scripts``, by name."""
    folder = importlib.resources.files("sandbox.model_scripts")
    found = {}
    for entry in folder.iterdir():
        if entry.name.endswith(".toml"):
            found[entry.name[: -len(".toml")]] = Path(str(entry))
    return dict(sorted(found.items()))


def load_script(path: str | Path) -> Script:
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ScriptLoadError(str(path), f"cannot read: {exc.strerror}") from None
    fmt = "json" if path.suffix == ".json" else "toml"
    return parse_script(data, source=str(path), name=path.stem, fmt=fmt)


def resolve_script(name_or_path: str) -> Script:
    """A shipped script by name, or a script file by path."""
    shipped = shipped_scripts()
    if name_or_path in shipped:
        return load_script(shipped[name_or_path])
    path = Path(name_or_path)
    if path.suffix in (".toml", ".json") or path.exists():
        return load_script(path)
    raise ScriptLoadError(name_or_path, f"no such script file or shipped script; shipped: {', '.join(shipped) or 'none'}")
