"""Retention: delete the oldest rows and record a checkpoint so the chain still verifies.

Only a prefix of the chain can go (rows are deleted from the first one up to the last
row before the first row that is new enough), so what remains starts right after the
checkpoint and links to its hash. The chain is verified before anything is deleted:
pruning never launders a tampered row into a checkpoint.
"""

from __future__ import annotations

import logging
import sqlite3
import time
from dataclasses import dataclass

from ._chain import latest_checkpoint, verify
from ._errors import ChainBroken
from ._rows import fts_text

logger = logging.getLogger(__name__)


@dataclass(frozen=True, kw_only=True)
class PruneResult:
    rows: int
    """Rows deleted."""
    checkpoint_row: int
    """The last deleted row; verification starts after it."""
    checkpoint_hash: str
    """Hex."""


def prune(conn: sqlite3.Connection, *, before_us: int) -> PruneResult:
    """Delete the chain's prefix of rows older than ``before_us``; record a checkpoint."""
    result = verify(conn)
    if result.problem is not None:
        raise ChainBroken(
            result.problem.row,
            result.problem.kind,
            f"not pruning: {result.problem.message}; keep the database as evidence and investigate",
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        base_id, base_hash = latest_checkpoint(conn)
        first_new = conn.execute("SELECT MIN(id) FROM audit WHERE ts_us >= ?", (before_us,)).fetchone()[0]
        max_id = conn.execute("SELECT MAX(id) FROM audit").fetchone()[0]
        last = (first_new - 1) if first_new is not None else max_id
        if last is None or last <= base_id:
            conn.execute("COMMIT")
            return PruneResult(rows=0, checkpoint_row=base_id, checkpoint_hash=base_hash.hex())
        last_hash = conn.execute("SELECT hash FROM audit WHERE id = ?", (last,)).fetchone()[0]
        deletes = []
        for row_id, type_, body in conn.execute("SELECT id, type, body FROM audit WHERE id > ? AND id <= ?", (base_id, last)):
            text = fts_text(type_, body)
            if text:
                deletes.append((row_id, text))
        conn.executemany("INSERT INTO audit_fts (audit_fts, rowid, text) VALUES ('delete', ?, ?)", deletes)
        count = conn.execute("DELETE FROM audit WHERE id > ? AND id <= ?", (base_id, last)).rowcount
        conn.execute(
            "INSERT INTO checkpoints (last_id, last_hash, rows, before_us, created_us) VALUES (?, ?, ?, ?, ?)",
            (last, last_hash, count, before_us, int(time.time() * 1_000_000)),
        )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    logger.info("audit prune: deleted %d rows up to row %d (checkpoint recorded)", count, last)
    return PruneResult(rows=count, checkpoint_row=last, checkpoint_hash=last_hash.hex())
