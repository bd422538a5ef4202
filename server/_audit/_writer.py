"""The batching writer: one SQLite transaction per batch, the hash chain extended in memory.

Synchronous on purpose (the subscriber runs it in one dedicated thread): sqlite3 releases
the GIL while it works, so fetching the next batch from NATS overlaps with writing this one.

Idempotence: rows are UNIQUE on (stream, stream_seq), and the writer skips any message
whose stream sequence is not above the last one it stored for that stream, *before*
it is hashed, so a redelivery never forks the chain.
"""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import dataclass, field

from ._chain import latest_checkpoint, row_hash
from ._db import GENESIS
from ._rows import Prepared, prepare

logger = logging.getLogger(__name__)

Incoming = tuple[str, int, str, bytes]
"""(stream: "events" | "audit", stream sequence, subject, payload)."""

_INSERT = (
    "INSERT INTO audit (id, stream, stream_seq, ts_us, task_id, seq, type, kind, key_id, subject, body,"
    " prev_hash, hash) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
)
_CACHE_LIMIT = 100_000
NOTABLE_TYPES = frozenset({"security", "notice", "malformed"})


@dataclass(frozen=True, kw_only=True)
class Notable:
    """A stored row the alerter looks at (security events, notices, malformed payloads)."""

    row: int
    type: str
    kind: str | None
    task_id: str | None
    key_id: str | None
    ts_us: int
    severity: str | None
    detail: str | None


@dataclass(kw_only=True)
class BatchResult:
    stored: int = 0
    duplicates: int = 0
    malformed: int = 0
    head_id: int = 0
    head_hash: str = GENESIS
    notable: list[Notable] = field(default_factory=list)


class Writer:
    """Owns the write side of one audit database connection."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        row = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        if row:
            self.head_id, self.head_hash = int(row[0]), str(row[1])
        else:
            self.head_id, self.head_hash = latest_checkpoint(conn)
        self.head: tuple[int, str] = (self.head_id, self.head_hash)
        """(row, hash) of the last committed row, replaced as one value (read from other threads)."""
        self.last_seq: dict[str, int] = {
            stream: int(seq)
            for stream, seq in conn.execute("SELECT stream, MAX(stream_seq) FROM audit GROUP BY stream")
        }
        for name, value in conn.execute("SELECT name, value FROM meta WHERE name LIKE 'last_seq:%'"):
            stream = name.split(":", 1)[1]
            self.last_seq[stream] = max(self.last_seq.get(stream, 0), int(value))
        self._keys: dict[str, str | None] = {}

    def _key_for(self, task_id: str | None) -> str | None:
        if task_id is None:
            return None
        try:
            return self._keys[task_id]
        except KeyError:
            pass
        row = self.conn.execute("SELECT key_id FROM task_keys WHERE task_id = ?", (task_id,)).fetchone()
        if len(self._keys) >= _CACHE_LIMIT:
            self._keys.clear()
        key = self._keys[task_id] = row[0] if row else None
        return key

    def write_batch(self, batch: list[Incoming]) -> BatchResult:
        """Store every new message of ``batch`` in one transaction; return what was stored."""
        result = BatchResult()
        rows: list[tuple[object, ...]] = []
        fts: list[tuple[int, str]] = []
        new_keys: list[tuple[str, str]] = []
        head_id, head_hash = self.head_id, self.head_hash
        last_seq = dict(self.last_seq)
        keys = self._keys
        for stream, stream_seq, subject, data in batch:
            if stream_seq <= last_seq.get(stream, 0):
                result.duplicates += 1
                continue
            last_seq[stream] = stream_seq
            p: Prepared = prepare(stream, subject, data)
            key_id = p.key_id
            if p.type == "accepted" and key_id and p.task_id:
                keys[p.task_id] = key_id
                new_keys.append((p.task_id, key_id))
            elif key_id is None and p.type != "notice":
                key_id = keys[p.task_id] if p.task_id in keys else self._key_for(p.task_id)
            content = (stream, stream_seq, p.ts_us, p.task_id, p.seq, p.type, p.kind, key_id, subject, p.body)
            head_id += 1
            prev_hash, head_hash = head_hash, row_hash(head_hash, content)
            rows.append((head_id, *content, prev_hash, head_hash))
            if p.fts:
                fts.append((head_id, p.fts))
            if p.type in NOTABLE_TYPES:
                if p.type == "malformed":
                    result.malformed += 1
                result.notable.append(Notable(
                    row=head_id, type=p.type, kind=p.kind, task_id=p.task_id, key_id=key_id,
                    ts_us=p.ts_us, severity=p.severity, detail=p.detail,
                ))
        if rows or last_seq != self.last_seq:
            self._commit(rows, fts, new_keys, head_id, head_hash, last_seq)
        self.head_id, self.head_hash, self.last_seq = head_id, head_hash, last_seq
        self.head = (head_id, head_hash)
        result.stored, result.head_id, result.head_hash = len(rows), head_id, head_hash
        return result

    def _commit(
        self,
        rows: list[tuple[object, ...]],
        fts: list[tuple[int, str]],
        new_keys: list[tuple[str, str]],
        head_id: int,
        head_hash: str,
        last_seq: dict[str, int],
    ) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_INSERT, rows)
            if fts:
                conn.executemany("INSERT INTO audit_fts (rowid, text) VALUES (?, ?)", fts)
            if new_keys:
                conn.executemany("INSERT OR REPLACE INTO task_keys (task_id, key_id) VALUES (?, ?)", new_keys)
            meta = [("head_id", str(head_id)), ("head_hash", head_hash)]
            meta += [(f"last_seq:{s}", str(v)) for s, v in last_seq.items()]
            conn.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", meta)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            for task_id, _ in new_keys:  # the cache must not outlive a rolled-back batch
                self._keys.pop(task_id, None)
            raise
