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
from ._errors import AuditError
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
    count: int = 1


@dataclass(kw_only=True)
class BatchResult:
    stored: int = 0
    duplicates: int = 0
    malformed: int = 0
    head_id: int = 0
    head_hash: bytes = GENESIS
    notable: list[Notable] = field(default_factory=list)


@dataclass(kw_only=True)
class PreparedBatch:
    """Rows of one batch, chained and ready to insert (the output of ``Writer.prepare``)."""

    rows: list[tuple[object, ...]]
    fts: list[tuple[int, str]]
    new_keys: list[tuple[str, str]]
    last_seq: dict[str, int]
    result: BatchResult


class Writer:
    """Owns the write side of one audit database connection.

    ``write_batch`` = ``prepare`` (decode, redact, chain: Python) then ``commit`` (SQLite).
    They are separate steps so each can be measured (benchmarks/bench_audit.py); running
    them in two threads was tried and is slower (GIL hand-offs on every row). A failed
    commit leaves the writer unusable (its chain went past what is stored): make a new one.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn
        row = conn.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
        head = (int(row[0]), bytes(row[1])) if row else latest_checkpoint(conn)
        self.head: tuple[int, bytes] = head
        """(row, hash) of the last committed row, replaced as one value (read from other threads)."""
        self.last_seq: dict[str, int] = {
            stream: int(seq) for stream, seq in conn.execute("SELECT stream, MAX(stream_seq) FROM audit GROUP BY stream")
        }
        for name, value in conn.execute("SELECT name, value FROM meta WHERE name LIKE 'last_seq:%'"):
            stream = name.split(":", 1)[1]
            self.last_seq[stream] = max(self.last_seq.get(stream, 0), int(value))
        self._next_head = head
        self._next_seq = dict(self.last_seq)
        self._keys: dict[str, str | None] = {}
        self._reader = _reader_for(conn)
        self._broken = False

    @property
    def head_id(self) -> int:
        return self.head[0]

    @property
    def head_hash(self) -> bytes:
        return self.head[1]

    def close(self) -> None:
        self._reader.close()

    def _key_for(self, task_id: str | None) -> str | None:
        if task_id is None:
            return None
        row = self._reader.execute("SELECT key_id FROM task_keys WHERE task_id = ?", (task_id,)).fetchone()
        if len(self._keys) >= _CACHE_LIMIT:
            self._keys.clear()
        key = self._keys[task_id] = row[0] if row else None
        return key

    def write_batch(self, batch: list[Incoming]) -> BatchResult:
        """Store every new message of ``batch`` in one transaction; return what was stored."""
        return self.commit(self.prepare(batch))

    def prepare(self, batch: list[Incoming]) -> PreparedBatch:
        if self._broken:
            raise AuditError("the audit writer failed to commit a batch; restart it")
        result = BatchResult()
        rows: list[tuple[object, ...]] = []
        fts: list[tuple[int, str]] = []
        new_keys: list[tuple[str, str]] = []
        head_id, head_hash = self._next_head
        last_seq = self._next_seq
        keys = self._keys
        notable = result.notable
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
                notable.append(
                    Notable(
                        row=head_id,
                        type=p.type,
                        kind=p.kind,
                        task_id=p.task_id,
                        key_id=key_id,
                        ts_us=p.ts_us,
                        severity=p.severity,
                        detail=p.detail,
                        count=p.count,
                    )
                )
        self._next_head = (head_id, head_hash)
        result.stored, result.head_id, result.head_hash = len(rows), head_id, head_hash
        return PreparedBatch(rows=rows, fts=fts, new_keys=new_keys, last_seq=dict(last_seq), result=result)

    def commit(self, batch: PreparedBatch) -> BatchResult:
        """Write one prepared batch in one transaction."""
        result = batch.result
        if batch.rows or batch.last_seq != self.last_seq:
            try:
                self._commit(batch)
            except sqlite3.OperationalError as exc:
                if not is_retryable(exc):  # busy or full: rolled back; committing the same batch again is fine
                    self._broken = True
                raise
            except BaseException:
                self._broken = True
                raise
        self.last_seq = batch.last_seq
        self.head = (result.head_id, result.head_hash)
        return result

    def _commit(self, batch: PreparedBatch) -> None:
        conn = self.conn
        result = batch.result
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(_INSERT, batch.rows)
            if batch.fts:
                conn.executemany("INSERT INTO audit_fts (rowid, text) VALUES (?, ?)", batch.fts)
            if batch.new_keys:
                conn.executemany("INSERT OR REPLACE INTO task_keys (task_id, key_id) VALUES (?, ?)", batch.new_keys)
            meta = [("head_id", str(result.head_id)), ("head_hash", result.head_hash.hex())]
            meta += [(f"last_seq:{s}", str(v)) for s, v in batch.last_seq.items()]
            conn.executemany("INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)", meta)
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # SQLite has already rolled back after some errors (a full disk)
                conn.execute("ROLLBACK")
            raise


def is_busy(exc: BaseException) -> bool:
    """SQLite could not get the write lock in time (another process holds it, e.g. a prune)."""
    return isinstance(exc, sqlite3.OperationalError) and ("locked" in str(exc) or "busy" in str(exc))


def is_full(exc: BaseException) -> bool:
    """The disk (or the database's size limit) is full: nothing was written."""
    return isinstance(exc, sqlite3.OperationalError) and (
        getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL or "full" in str(exc)
    )


def is_retryable(exc: BaseException) -> bool:
    """A failed commit that leaves nothing written and may succeed later: busy or full."""
    return is_busy(exc) or is_full(exc)


def _reader_for(conn: sqlite3.Connection) -> sqlite3.Connection:
    """A second connection to the same file for lookups while a commit runs in another thread."""
    path = conn.execute("PRAGMA database_list").fetchone()[2]
    if not path:  # in-memory database: share the connection
        return conn
    reader = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False)
    reader.execute("PRAGMA query_only = ON")
    return reader
