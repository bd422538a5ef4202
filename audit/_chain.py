"""The hash chain: canonical row encoding, hashing, and ``verify``.

    hash = sha256(prev_hash || canonical(row content))

The content is the JSON array of the row's content columns, in ``CONTENT_COLUMNS``
order (msgspec's JSON encoding is deterministic for these scalar types). The row id
is not hashed: the chain itself fixes the order (each row links to the one before),
and the gapless id makes a deleted row visible even when its neighbours still link.

``verify`` walks the rows in id order from the genesis (or the last prune checkpoint)
and names the first row that was:
- deleted:  an id is missing, or the log ends before the head the writer recorded;
- altered:  its stored hash is not the hash of its content, or the next row does not
  link to it (it was replaced by a row with a recomputed hash);
- inserted: it verifies on its own but the next row links past it (to the row
  before it), or it lies after the head the writer recorded.
"""

from __future__ import annotations

import hashlib
import sqlite3
from dataclasses import dataclass
from typing import Any

import msgspec

from ._db import GENESIS, get_meta

CONTENT_COLUMNS = (
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
)
_encode = msgspec.json.Encoder().encode
_sha256 = hashlib.sha256


def row_hash(prev_hash: bytes, content: tuple[Any, ...]) -> bytes:
    """Hash of one row: sha256 over the previous hash (32 bytes) and the canonical content."""
    h = _sha256(prev_hash)
    h.update(_encode(content))
    return h.digest()


@dataclass(frozen=True, kw_only=True)
class Problem:
    row: int
    kind: str
    """deleted, altered or inserted."""
    message: str


@dataclass(frozen=True, kw_only=True)
class VerifyResult:
    ok: bool
    rows: int
    """Rows checked."""
    first_row: int | None
    last_row: int | None
    head_hash: str
    """Hex."""
    checkpoint_row: int
    problem: Problem | None = None


def latest_checkpoint(conn: sqlite3.Connection) -> tuple[int, bytes]:
    """(last pruned row id, its hash); (0, GENESIS) when nothing was pruned."""
    row = conn.execute("SELECT last_id, last_hash FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
    return (int(row[0]), bytes(row[1])) if row else (0, GENESIS)


def verify(conn: sqlite3.Connection, *, chunk: int = 5000) -> VerifyResult:
    """Walk the chain in one read snapshot; stop at the first problem."""
    conn.execute("BEGIN")
    try:
        return _verify(conn, chunk)
    finally:
        conn.execute("COMMIT")


def _verify(conn: sqlite3.Connection, chunk: int) -> VerifyResult:
    base_id, base_hash = latest_checkpoint(conn)
    expected_id = base_id + 1
    prev_hash, prev_prev_hash = base_hash, None
    first: int | None = None
    count = 0
    cols = ", ".join(CONTENT_COLUMNS)
    cursor = conn.execute(f"SELECT id, {cols}, prev_hash, hash FROM audit WHERE id > ? ORDER BY id", (base_id,))

    def result(problem: Problem | None) -> VerifyResult:
        return VerifyResult(
            ok=problem is None,
            rows=count,
            first_row=first,
            last_row=expected_id - 1 if count else None,
            head_hash=prev_hash.hex(),
            checkpoint_row=base_id,
            problem=problem,
        )

    while rows := cursor.fetchmany(chunk):
        for row in rows:
            row_id, stored_prev, stored_hash = row[0], row[-2], row[-1]
            if first is None:
                first = row_id
            if row_id != expected_id:
                return result(
                    Problem(
                        row=expected_id,
                        kind="deleted",
                        message=f"row {expected_id} was deleted (the next row present is {row_id})",
                    )
                )
            if row_hash(stored_prev, row[1:-2]) != stored_hash:
                return result(
                    Problem(
                        row=row_id,
                        kind="altered",
                        message=f"row {row_id} was altered (its hash does not match its content)",
                    )
                )
            if stored_prev != prev_hash:
                if prev_prev_hash is not None and stored_prev == prev_prev_hash:
                    return result(
                        Problem(
                            row=row_id - 1,
                            kind="inserted",
                            message=f"row {row_id - 1} was inserted (row {row_id} links to the row before it)",
                        )
                    )
                if row_id - 1 <= base_id:
                    return result(
                        Problem(
                            row=row_id,
                            kind="altered",
                            message=f"row {row_id} was altered (it does not link to the checkpoint or genesis)",
                        )
                    )
                return result(
                    Problem(
                        row=row_id - 1,
                        kind="altered",
                        message=f"row {row_id - 1} was altered or replaced (row {row_id} does not link to it), "
                        "or rows after it were deleted and the rest renumbered",
                    )
                )
            prev_prev_hash, prev_hash = prev_hash, stored_hash
            expected_id += 1
            count += 1
    return result(_check_head(conn, expected_id - 1, prev_hash))


def _check_head(conn: sqlite3.Connection, last_id: int, last_hash: bytes) -> Problem | None:
    """Compare the end of the chain with the head the writer recorded after its last batch."""
    head_id = get_meta(conn, "head_id")
    if head_id is None:
        return None
    head = int(head_id)
    if last_id < head:
        return Problem(
            row=last_id + 1,
            kind="deleted",
            message=f"rows {last_id + 1}..{head} were deleted (the log ends before the recorded head)",
        )
    if last_id > head:
        return Problem(
            row=head + 1,
            kind="inserted",
            message=f"row {head + 1} was inserted after the recorded head (row {head})",
        )
    if get_meta(conn, "head_hash") != last_hash.hex():
        return Problem(
            row=head,
            kind="altered",
            message=f"row {head} was altered or replaced (its hash differs from the recorded head)",
        )
    return None
