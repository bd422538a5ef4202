"""The SQLite file: connection settings and schema migrations (``PRAGMA user_version``).

Each migration is a list of statements applied in one ``BEGIN IMMEDIATE`` transaction
that also bumps ``user_version``; the version is re-read inside the transaction, so two
processes opening a fresh file at once migrate it once. Times are UTC epoch seconds
(REAL); ledger rows also carry their UTC day (``YYYY-MM-DD``) and month (``YYYY-MM``);
ledger amounts are integer micro-USD.

Never edit a migration that shipped: add a new one at the end.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

from typing import Any

import aiosqlite

from bus import private_database

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0

# v1: the first schema (profiles, keys, the ledger, the task registry).
V1: tuple[str, ...] = (
    """CREATE TABLE profiles (
        name TEXT PRIMARY KEY,
        data TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL)""",
    """CREATE TABLE api_keys (
        prefix TEXT PRIMARY KEY,
        hash TEXT NOT NULL UNIQUE,
        name TEXT,
        profile TEXT NOT NULL,
        created_at REAL NOT NULL,
        expires_at REAL,
        revoked_at REAL)""",
    """CREATE TABLE ledger (
        task_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        amount INTEGER NOT NULL,
        actual INTEGER,
        state TEXT NOT NULL CHECK (state IN ('reserved', 'settled', 'released')),
        day TEXT NOT NULL,
        month TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL)""",
    "CREATE INDEX ledger_key_day ON ledger (key_id, day)",
    "CREATE INDEX ledger_key_month ON ledger (key_id, month)",
    "CREATE INDEX ledger_state ON ledger (state, created_at)",
    """CREATE TABLE tasks (
        task_id TEXT PRIMARY KEY,
        key_id TEXT NOT NULL,
        profile TEXT NOT NULL,
        kind TEXT NOT NULL,
        status TEXT NOT NULL,
        reserved REAL NOT NULL DEFAULT 0,
        cost REAL,
        model TEXT,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        finished_at REAL,
        result_summary TEXT,
        error_code TEXT)""",
)

# v2: key rotation (account, replaced_by, grace_until), per-account budget overrides,
# the rate-limit window, a task index by key.
V2: tuple[str, ...] = (
    "ALTER TABLE api_keys ADD COLUMN account TEXT",
    "UPDATE api_keys SET account = prefix WHERE account IS NULL",
    "ALTER TABLE api_keys ADD COLUMN replaced_by TEXT",
    "ALTER TABLE api_keys ADD COLUMN grace_until REAL",
    "CREATE INDEX api_keys_account ON api_keys (account)",
    "CREATE INDEX api_keys_profile ON api_keys (profile)",
    """CREATE TABLE key_budgets (
        account TEXT PRIMARY KEY,
        day_usd REAL,
        month_usd REAL,
        updated_at REAL NOT NULL)""",
    "CREATE TABLE rate_events (key_id TEXT NOT NULL, ts REAL NOT NULL)",
    "CREATE INDEX rate_events_key_ts ON rate_events (key_id, ts)",
    "CREATE INDEX tasks_key ON tasks (key_id, created_at)",
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (V1, V2)
SCHEMA_VERSION = len(MIGRATIONS)


async def connect(path: Path, *, busy_timeout_s: float = BUSY_TIMEOUT_S) -> aiosqlite.Connection:
    """Open ``path`` in autocommit mode (transactions are explicit), WAL, foreign keys on."""
    private_database(path)
    db = await aiosqlite.connect(str(path), isolation_level=None, timeout=busy_timeout_s)
    try:
        db.row_factory = aiosqlite.Row
        await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_s * 1000)}")
        row = await _enable_wal(db, busy_timeout_s)
        if row is None or str(row[0]).lower() != "wal":
            logger.warning("%s: journal_mode is %s, not wal", path, row[0] if row else "?")
        await db.execute("PRAGMA synchronous = NORMAL")
        await db.execute("PRAGMA foreign_keys = ON")
    except BaseException:
        await asyncio.shield(db.close())
        raise
    return db


async def _enable_wal(db: aiosqlite.Connection, busy_timeout_s: float) -> Any:
    """Switch to WAL. On a fresh file opened by several processes at once SQLite answers
    "database is locked" at once (no busy handler for a journal-mode change), so retry."""
    deadline = time.monotonic() + busy_timeout_s
    delay = 0.01
    while True:
        try:
            async with db.execute("PRAGMA journal_mode = WAL") as cur:
                return await cur.fetchone()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)


async def user_version(db: aiosqlite.Connection) -> int:
    async with db.execute("PRAGMA user_version") as cur:
        row = await cur.fetchone()
    return int(row[0]) if row else 0


async def migrate(
    db: aiosqlite.Connection,
    *,
    seed: Sequence[tuple[str, Sequence[object]]] = (),
    migrations: Sequence[Sequence[str]] = MIGRATIONS,
) -> tuple[int, int]:
    """Bring the schema to the latest version; returns (version before, version after).

    ``seed`` statements run in the same transaction as the first migration, i.e. only
    when the file is new.
    """
    target = len(migrations)
    before = await user_version(db)
    if before > target:
        from bus import ConfigError

        raise ConfigError(
            "database", f"schema version {before} is newer than this taskbus ({target}); upgrade taskbus"
        )
    while True:
        await db.execute("BEGIN IMMEDIATE")
        try:
            current = await user_version(db)
            if current >= target:
                await db.execute("COMMIT")
                break
            for statement in migrations[current]:
                await db.execute(statement)
            if current == 0:
                for sql, args in seed:
                    await db.execute(sql, tuple(args))
            await db.execute(f"PRAGMA user_version = {current + 1}")
            await db.execute("COMMIT")
            logger.debug("database migrated to schema version %d", current + 1)
        except BaseException:
            try:
                await asyncio.shield(db.execute("ROLLBACK"))
            except sqlite3.Error as exc:
                logger.warning("rollback after failed migration failed: %s", exc)
            raise
    return before, target
