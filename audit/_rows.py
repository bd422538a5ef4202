"""From a bus message to the content of one audit row (decode, redact, search text).

Hot path of the writer: one reusable msgspec decoder per message type, no per-field
redaction unless the payload contains something that could be a credential.

Redaction: ``bus.redact`` patterns all need one of a few literal markers (``tb_``,
``sk-``, ``AKIA``, ``gh?_``, or case-insensitively bearer / api key / authorization /
password / secret / token). Those are plain ASCII, which JSON encodes verbatim, so a
payload whose bytes contain none of them (and no ``\\u`` escape that could hide
one) has nothing to redact and is stored as sent. The check runs one regex over the
lower-cased bytes (about 4 us for a typical event). Any other payload is decoded to
plain values, every string passes through ``bus.redact_obj``, and it is re-encoded.
When a pattern is added to ``bus._redact`` its marker must be added to ``_MARKERS``
(tests/audit/test_redaction.py checks the known shapes).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import msgspec

from bus import (
    EVENT_TYPES,
    Accepted,
    Artifact,
    AuditNotice,
    Event,
    Finished,
    Log,
    MessageDecodeError,
    ModelCall,
    Security,
    Started,
    ToolCall,
    ToolResult,
    check_token,
    decode_event,
    decode_notice,
    redact,
    redact_obj,
)
from bus import Message as MessageEvent

# A superset of every bus._redact pattern as it appears in lower-cased JSON text (a quote
# inside a string is \", a newline \n; msgspec writes other non-ASCII as raw UTF-8).
# bus.redact's (?i) keywords also match four non-ASCII letters by Unicode case folding
# (U+0130 and U+0131 -> i, U+017F long s -> s, U+212A Kelvin sign -> k), and its \s
# matches non-ASCII spaces: the first are markers of their own, the second are allowed
# between keyword and [:=]. Each branch
# starts with a literal, which keeps Python's regex engine fast (~2 us per event).
_SEP = rb"(?:\\?[\"'])?(?:\s|\\[nrtfb]|[\x80-\xff])*[:=]"
_MARKERS = re.compile(
    rb"tb_|sk-|akia|gh[pousr]_|\\u|bearer|\xc4\xb0|\xc4\xb1|\xc5\xbf|\xe2\x84\xaa|"
    + b"|".join(word + _SEP for word in (b"key", b"authorization", b"password", b"secret", b"token"))
)
_TAGS: dict[type, str] = {cls: str(cls.__struct_config__.tag) for cls in EVENT_TYPES}
_encode = msgspec.json.Encoder().encode
_decode_any = msgspec.json.Decoder().decode
_decode_event = msgspec.json.Decoder(Event).decode
DEFAULT_MAX_BYTES = 1_048_576
MAX_FTS_CHARS = 65_536
MAX_MALFORMED_BYTES = 4096

EVENTS = "events"
NOTICES = "audit"


def ts_us(ts: datetime) -> int:
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return int(ts.timestamp() * 1_000_000)


def needs_redaction(data: bytes) -> bool:
    """True when the payload may hold something ``bus.redact`` would replace."""
    return _MARKERS.search(data.lower()) is not None


class Prepared(msgspec.Struct, frozen=True, array_like=True):
    """Content of one row, before the writer assigns its id and hashes it."""

    ts_us: int
    task_id: str | None
    seq: int | None
    type: str
    kind: str | None
    key_id: str | None
    body: str
    fts: str
    severity: str | None = None
    detail: str | None = None
    count: int = 1
    """How many occurrences the row stands for (an aggregated auth_failure notice)."""


def prepare(stream: str, subject: str, data: bytes) -> Prepared:
    """Decode and redact one message; a payload that does not decode becomes ``malformed``."""
    try:
        if stream == EVENTS:
            return _event(data)
        return _notice(data)
    except MessageDecodeError as exc:
        return _malformed(stream, subject, data, exc.describe())
    except (msgspec.DecodeError, ValueError, TypeError) as exc:  # redaction re-decode, odd values
        return _malformed(stream, subject, data, f"{type(exc).__name__}: {exc}")


def _redacted_body(data: bytes) -> str:
    """Every string through ``redact_obj``, then the JSON text through ``redact`` too (which
    also catches ``"password": "..."`` pairs), unless that would break the JSON."""
    plain = _encode(redact_obj(_decode_any(data))).decode()
    text = redact(plain)
    if text != plain:
        try:
            _decode_any(text)
        except msgspec.DecodeError:
            return plain
    return text


_Fields = tuple[str, str | None, str | None, str | None, str | None]
"""(search text, kind, key_id, severity, detail) of one event."""

# One small function per event type (a dict lookup is faster than a ten-way match).
# model_call and started carry nothing worth full-text search (filter them by --type).
_FIELDS: dict[type, Callable[[Any], _Fields]] = {
    MessageEvent: lambda e: (e.text, None, None, None, None),
    ToolCall: lambda e: (f"{e.name} {_encode(e.input).decode()}", None, None, None, None),
    ToolResult: lambda e: (e.output, None, None, None, None),
    Log: lambda e: (e.line, None, None, None, None),
    ModelCall: lambda e: ("", None, None, None, None),
    Security: lambda e: (f"{e.kind} {e.detail}", e.kind, None, e.severity, e.detail),
    Finished: lambda e: (f"{e.status} {e.reason or ''} {e.result}", e.status, None, None, None),
    Accepted: lambda e: (f"{e.profile} {e.model} {e.routing_reason}", None, e.key_id, None, None),
    Artifact: lambda e: (e.path, None, None, None, None),
    Started: lambda e: ("", None, None, None, None),
}


def _event_fields(ev: Any) -> _Fields:
    fields = _FIELDS.get(type(ev))
    return fields(ev) if fields else ("", None, None, None, None)


def _event(data: bytes) -> Prepared:
    try:
        ev = _decode_event(data) if len(data) <= DEFAULT_MAX_BYTES else decode_event(data)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError, ValueError):
        ev = decode_event(data)  # raises MessageDecodeError with the bus's wording
    if needs_redaction(data):
        body = _redacted_body(data)
        try:  # the search text comes from the stored (redacted) body, so pruning can re-derive it
            ev = decode_event(body.encode())
        except MessageDecodeError:
            pass
        fts, kind, key_id, severity, detail = _event_fields(ev)
        fts, detail = redact(fts), redact(detail) if detail else detail
    else:
        body = data.decode()
        fts, kind, key_id, severity, detail = _event_fields(ev)
    return Prepared(
        ts_us=ts_us(ev.ts),
        task_id=ev.task_id,
        seq=ev.seq,
        type=_TAGS[type(ev)],
        kind=kind,
        key_id=key_id,
        body=body,
        fts=fts[:MAX_FTS_CHARS],
        severity=severity,
        detail=detail,
    )


def _notice(data: bytes) -> Prepared:
    notice: AuditNotice = decode_notice(data)
    if needs_redaction(data):
        body = _redacted_body(data)
        try:
            notice = decode_notice(body.encode())
        except MessageDecodeError:
            pass
        fts = redact(_notice_text(notice))
    else:
        body = data.decode()
        fts = _notice_text(notice)
    return Prepared(
        ts_us=ts_us(notice.ts),
        task_id=notice.task_id,
        seq=None,
        type="notice",
        kind=notice.kind,
        key_id=redact(notice.actor),
        body=body,
        fts=fts[:MAX_FTS_CHARS],
        detail=notice.code,
        count=_count(notice.detail.get("count")),
    )


def _count(value: object) -> int:
    return min(value, 1_000_000_000) if isinstance(value, int) and not isinstance(value, bool) and value > 1 else 1


def _notice_text(notice: AuditNotice) -> str:
    return f"{notice.kind} {notice.actor} {notice.code or ''} {_encode(notice.detail).decode()}"


def _malformed(stream: str, subject: str, data: bytes, error: str) -> Prepared:
    task_id: str | None = None
    if stream == EVENTS:
        try:
            task_id = check_token(subject.rsplit(".", 1)[-1])
        except ValueError:
            task_id = None
    raw = redact(data[:MAX_MALFORMED_BYTES].decode("utf-8", "replace"))
    error = redact(error)[:1000]
    body: dict[str, Any] = {"error": error, "raw": raw, "size": len(data), "truncated": len(data) > MAX_MALFORMED_BYTES}
    return Prepared(
        ts_us=int(time.time() * 1_000_000),
        task_id=task_id,
        seq=None,
        type="malformed",
        kind=stream,
        key_id=None,
        body=_encode(body).decode(),
        fts=error,
    )


def fts_text(type_: str, body: str) -> str:
    """The search text of a stored row, derived again from its body (used when pruning,
    because the FTS table is contentless and a delete must name the indexed text)."""
    if type_ == "malformed":
        return str(_decode_any(body).get("error", ""))
    stream = NOTICES if type_ == "notice" else EVENTS
    prepared = prepare(stream, "", body.encode())
    return prepared.fts
