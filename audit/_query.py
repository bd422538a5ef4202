"""The read side: search, tail (last rows), export, and the row format the CLI prints."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from typing import IO, Any

import msgspec

from bus import InvalidInput, is_duration, parse_duration

_decode = msgspec.json.Decoder().decode
_encode = msgspec.json.Encoder().encode

COLUMNS = (
    "id",
    "stream",
    "stream_seq",
    "ts_us",
    "task_id",
    "seq",
    "type",
    "kind",
    "key_id",
    "subject",
    "body",
    "prev_hash",
    "hash",
)
_SELECT = f"SELECT {', '.join('a.' + c for c in COLUMNS)} FROM audit a"


def parse_time(value: str, *, now: float | None = None) -> int:
    """A duration ago (``1h``) or an ISO date/time (UTC when no zone) -> microseconds since epoch."""
    now = time.time() if now is None else now
    if is_duration(value):
        return int((now - parse_duration(value)) * 1_000_000)
    try:
        ts = datetime.fromisoformat(value.strip().replace("Z", "+00:00"))
    except ValueError:
        raise InvalidInput(f"{value!r} is neither a duration (1h, 30m, 7d) nor an ISO time (2026-01-31T12:00:00Z)") from None
    if ts.tzinfo is None:
        ts = ts.replace(tzinfo=UTC)
    return int(ts.timestamp() * 1_000_000)


def iso(ts_us: int) -> str:
    return datetime.fromtimestamp(ts_us / 1_000_000, UTC).isoformat(timespec="milliseconds")


def row_dict(row: Sequence[Any], *, with_hashes: bool = False) -> dict[str, Any]:
    """One stored row as the CLI shows it (``event`` is the stored, redacted JSON)."""
    values = dict(zip(COLUMNS, row, strict=True))
    try:
        event = _decode(values["body"])
    except msgspec.DecodeError:
        event = values["body"]
    out = {
        "id": values["id"],
        "ts": iso(values["ts_us"]),
        "stream": values["stream"],
        "stream_seq": values["stream_seq"],
        "task_id": values["task_id"],
        "seq": values["seq"],
        "type": values["type"],
        "kind": values["kind"],
        "key_id": values["key_id"],
        "subject": values["subject"],
        "event": event,
    }
    if with_hashes:
        out["prev_hash"], out["hash"] = values["prev_hash"].hex(), values["hash"].hex()
    return out


def fts_query(text: str) -> str:
    """User text -> an FTS5 query matching rows that contain every word (no FTS syntax)."""
    words = [w for w in re.split(r"\s+", text.strip()) if w]
    if not words:
        raise InvalidInput("--text is empty; give one or more words to search for")
    return " ".join('"' + w.replace('"', '""') + '"' for w in words)


def _json(path: str) -> str:
    """A JSON field of the row's body (NULL for a body that is not JSON, e.g. a malformed row)."""
    return f"(CASE WHEN json_valid(a.body) THEN json_extract(a.body, '{path}') END)"


# a spawn or skill call (tool_call.invokes), or a catalog change notice about the entry
_CATALOG_MATCH = f"({_json('$.invokes')} = ? OR ({_json('$.detail.catalog_kind')} = ? AND {_json('$.detail.name')} = ?))"


def _where(
    *,
    since_us: int | None = None,
    until_us: int | None = None,
    types: Sequence[str] = (),
    key: str | None = None,
    task: str | None = None,
    text: str | None = None,
    agent: str | None = None,
    skill: str | None = None,
) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    for kind, name in (("agent", agent), ("skill", skill)):
        if name:
            clauses.append(_CATALOG_MATCH if kind == "skill" else f"({_CATALOG_MATCH} OR {_json('$.agent')} = ?)")
            params += [f"{kind}:{name}", kind, name] + ([name] if kind == "agent" else [])
    if since_us is not None:
        clauses.append("a.ts_us >= ?")
        params.append(since_us)
    if until_us is not None:
        clauses.append("a.ts_us <= ?")
        params.append(until_us)
    if types:
        marks = ", ".join("?" * len(types))
        clauses.append(f"(a.type IN ({marks}) OR a.kind IN ({marks}))")
        params += [*types, *types]
    if key:
        clauses.append("a.key_id = ?")
        params.append(key)
    if task:
        clauses.append("a.task_id = ?")
        params.append(task)
    if text:
        clauses.append("a.id IN (SELECT rowid FROM audit_fts WHERE audit_fts MATCH ?)")
        params.append(fts_query(text))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def search(conn: sqlite3.Connection, *, limit: int = 100, newest: bool = False, **filters: Any) -> list[dict[str, Any]]:
    """Rows matching every given filter, oldest first (or the newest ``limit``, still shown oldest first)."""
    if limit < 1:
        raise InvalidInput(f"--limit must be at least 1 (got {limit})")
    where, params = _where(**filters)
    order = "DESC" if newest else "ASC"
    try:
        rows = conn.execute(f"{_SELECT}{where} ORDER BY a.id {order} LIMIT ?", (*params, limit)).fetchall()
    except sqlite3.OperationalError as exc:
        raise InvalidInput(f"search failed: {exc}") from None
    if newest:
        rows.reverse()
    return [row_dict(r) for r in rows]


def tail(conn: sqlite3.Connection, *, limit: int = 20, **filters: Any) -> list[dict[str, Any]]:
    """The last ``limit`` matching rows, oldest first."""
    return search(conn, limit=limit, newest=True, **filters)


def iter_rows(conn: sqlite3.Connection, *, chunk: int = 5000) -> Iterator[Sequence[Any]]:
    cursor = conn.execute(f"{_SELECT} ORDER BY a.id")
    while rows := cursor.fetchmany(chunk):
        yield from rows


def export_jsonl(conn: sqlite3.Connection, out: IO[bytes]) -> int:
    """Every row, in chain order, one JSON object per line, with the body exactly as hashed."""
    count = 0
    conn.execute("BEGIN")
    try:
        for row in iter_rows(conn):
            doc = dict(zip(COLUMNS, row, strict=True))
            doc["prev_hash"], doc["hash"] = doc["prev_hash"].hex(), doc["hash"].hex()
            out.write(_encode(doc) + b"\n")
            count += 1
    finally:
        conn.execute("COMMIT")
    return count


def summarize(row: dict[str, Any], width: int = 160) -> str:
    """A one-line human summary of a row's event."""
    event = row.get("event")
    if not isinstance(event, dict):
        return str(event)[:width]
    kind = row["type"]
    if kind == "message":
        text = event.get("text", "")
    elif kind == "tool_call":
        text = f"{event.get('name')} {_encode(event.get('input', {})).decode()}"
        if event.get("invokes"):
            text = f"-> {event['invokes']} {(event.get('invokes_sha256') or 'built-in')[:12]} | {text}"
        if event.get("agent"):
            text = f"(by {event['agent']}) {text}"
    elif kind == "tool_result":
        text = ("ERROR " if event.get("is_error") else "") + str(event.get("output", ""))
    elif kind == "security":
        text = f"[{event.get('severity')}] {event.get('kind')}: {event.get('detail')}"
    elif kind == "finished":
        text = f"{event.get('status')} {event.get('reason') or ''} cost ${event.get('cost_usd', 0):.4f} {event.get('result', '')}"
    elif kind == "accepted":
        text = f"{event.get('kind')} profile={event.get('profile')} model={event.get('model')}"
    elif kind == "started":
        text = f"runner={event.get('runner_id')} backend={event.get('backend')}"
    elif kind == "model_call":
        usage = event.get("usage", {})
        text = f"{event.get('model')} in={usage.get('input_tokens')} out={usage.get('output_tokens')} ${event.get('cost_usd', 0):.4f}"
    elif kind == "artifact":
        text = f"{event.get('path')} ({event.get('size')} bytes)"
    elif kind == "log":
        text = str(event.get("line", ""))
    elif kind == "notice":
        text = f"{event.get('kind')} by {event.get('actor')} {event.get('code') or ''} {_encode(event.get('detail', {})).decode()}"
    elif kind == "malformed":
        text = str(event.get("error", ""))
    else:
        text = _encode(event).decode()
    text = " ".join(str(text).split())
    return text if len(text) <= width else text[: width - 1] + "…"
