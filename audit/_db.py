"""The audit database: schema, migrations (PRAGMA user_version), connection setup.

One table ``audit`` holds every row of the hash chain; ``id`` is our own gapless
sequence (1, 2, 3, ...), so a deleted row leaves a visible gap. ``audit_fts`` is a
contentless FTS5 table (rowid = audit.id) fed in the same transaction as the rows;
contentless because it costs no second copy of the text (the text is derived from
``body`` again when rows are pruned, see ``_rows.fts_text``).
"""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
from pathlib import Path

from bus import private_database, private_dir

from ._errors import AuditError

logger = logging.getLogger(__name__)

GENESIS = bytes(32)
"""prev_hash of the first row (hashes are stored as 32-byte BLOBs, shown as hex)."""

_MIGRATIONS: tuple[str, ...] = (
    # 1: the chain, its indexes, FTS, task -> key map, checkpoints, meta
    """
    CREATE TABLE audit (
        id          INTEGER PRIMARY KEY,
        stream      TEXT    NOT NULL,
        stream_seq  INTEGER NOT NULL,
        ts_us       INTEGER NOT NULL,
        task_id     TEXT,
        seq         INTEGER,
        type        TEXT    NOT NULL,
        kind        TEXT,
        key_id      TEXT,
        subject     TEXT    NOT NULL,
        body        TEXT    NOT NULL,
        prev_hash   BLOB    NOT NULL,
        hash        BLOB    NOT NULL,
        UNIQUE (stream, stream_seq)
    );
    CREATE INDEX audit_task ON audit (task_id, seq);
    CREATE INDEX audit_key ON audit (key_id, ts_us);
    CREATE INDEX audit_type ON audit (type, ts_us);
    CREATE INDEX audit_ts ON audit (ts_us);
    CREATE VIRTUAL TABLE audit_fts USING fts5 (text, content='', tokenize='unicode61');
    CREATE TABLE task_keys (task_id TEXT PRIMARY KEY, key_id TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE checkpoints (
        id         INTEGER PRIMARY KEY AUTOINCREMENT,
        last_id    INTEGER NOT NULL,
        last_hash  BLOB    NOT NULL,
        rows       INTEGER NOT NULL,
        before_us  INTEGER NOT NULL,
        created_us INTEGER NOT NULL
    );
    CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    """,
)

SCHEMA_VERSION = len(_MIGRATIONS)


def default_db_path(data_path: Path) -> Path:
    return data_path / "audit.db"


def open_db(path: Path | str, *, readonly: bool = False, busy_timeout_s: float = 5.0) -> sqlite3.Connection:
    """Open (and, unless ``readonly``, create and migrate) the audit database.

    The connection is in autocommit mode (``isolation_level=None``); writers open
    their own ``BEGIN IMMEDIATE`` transactions.
    """
    path = Path(path)
    if readonly:
        if not path.exists():
            raise AuditError(f"no audit database at {path}; start `taskbus audit run` first or pass --db")
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None)
        conn.execute("PRAGMA query_only = ON")
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            conn.close()
            raise AuditError(f"{path} has audit schema {version}, newer than this taskbus ({SCHEMA_VERSION}); upgrade taskbus")
        return conn
    private_database(path)
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        conn.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        conn.execute("PRAGMA cache_size = -32000")
        # checkpoint the WAL every ~40 MB instead of ~4 MB: each checkpoint is an fsync,
        # and fewer of them roughly doubled ingest on a busy disk (benchmarks/bench_audit.py)
        conn.execute("PRAGMA wal_autocheckpoint = 10000")
        _migrate(conn, path)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise AuditError(f"cannot open audit database {path}: {exc}") from None
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > SCHEMA_VERSION:
        raise AuditError(f"{path} has audit schema {version}, newer than this taskbus ({SCHEMA_VERSION}); upgrade taskbus")
    for number in range(version + 1, SCHEMA_VERSION + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in _MIGRATIONS[number - 1].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        logger.info("audit database %s migrated to schema %d", path, number)


def get_meta(conn: sqlite3.Connection, name: str) -> str | None:
    row = conn.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
    return row[0] if row else None


class WriterLock:
    """An exclusive lock file next to the database: one writer per audit log.

    Two writers would fork the hash chain; the second one gets a clear error.
    """

    def __init__(self, db_path: Path) -> None:
        self.path = Path(str(db_path) + ".lock")
        self._fd: int | None = None

    def __enter__(self) -> WriterLock:
        private_dir(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AuditError(f"another `taskbus audit run` is writing {self.path.with_suffix('')}; stop it first") from None
        self._fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
