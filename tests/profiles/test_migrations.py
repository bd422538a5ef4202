"""Schema migrations: an old database upgrades in place and keeps its rows."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path

import pytest

from profiles import SCHEMA_VERSION, Store
from profiles._db import V1

OLD_KEY = "tb_" + "k" * 43


def _write_v1_database(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    con = sqlite3.connect(path)
    for statement in V1:
        con.execute(statement)
    con.execute(
        "INSERT INTO profiles VALUES ('legacy', ?, 1000, 1000)",
        ('{"name":"legacy","models":["claude-haiku-4-5"],"budget_day_usd":4.0,"max_concurrent":5}',),
    )
    con.execute(
        "INSERT INTO api_keys VALUES (?, ?, 'old key', 'legacy', 1000, NULL, NULL)",
        (OLD_KEY[:11], hashlib.sha256(OLD_KEY.encode()).hexdigest()),
    )
    con.execute(
        "INSERT INTO ledger VALUES ('t-old', ?, 1500000, 1000000, 'settled', '2026-03-15', '2026-03', 1000, 1000)",
        (OLD_KEY[:11],),
    )
    con.execute(
        "INSERT INTO tasks (task_id, key_id, profile, kind, status, reserved, cost, created_at, updated_at)"
        " VALUES ('t-old', ?, 'legacy', 'task', 'succeeded', 1.5, 1.0, 1000, 1000)",
        (OLD_KEY[:11],),
    )
    con.execute("PRAGMA user_version = 1")
    con.commit()
    con.close()


def _version(path: Path) -> int:
    con = sqlite3.connect(path)
    try:
        return con.execute("PRAGMA user_version").fetchone()[0]
    finally:
        con.close()


async def test_a_version_one_database_is_upgraded_in_place_keeping_its_rows(db_path: Path, clock):
    _write_v1_database(db_path)

    async with Store(db_path, now=clock) as store:
        key = await store.authenticate(OLD_KEY)
        profiles = [p.name for p in await store.list_profiles()]
        task = await store.get_task("t-old")
        status = await store.remaining_budget(key.prefix)
        _, new = await store.rotate(key.prefix, grace_s=60)  # a v2 feature on a v1 row

    assert SCHEMA_VERSION == 2 and _version(db_path) == SCHEMA_VERSION
    assert key.account == key.prefix and key.name == "old key"
    assert profiles == ["legacy"]  # the defaults are seeded only into new files
    assert task.status == "succeeded" and task.cost_usd == 1.0
    assert status.day.used_usd == pytest.approx(1.0) and status.day.limit_usd == 4.0
    assert new.account == key.prefix


async def test_a_new_database_is_created_at_the_latest_version_with_the_default_profiles(db_path: Path):
    async with Store(db_path) as store:
        names = [p.name for p in await store.list_profiles()]
    assert _version(db_path) == SCHEMA_VERSION
    assert names == ["admin", "complete-only", "developer", "readonly-analyst"]
    con = sqlite3.connect(db_path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()


async def test_opening_a_database_from_a_newer_taskbus_is_refused(db_path: Path):
    async with Store(db_path):
        pass
    con = sqlite3.connect(db_path)
    con.execute("PRAGMA user_version = 99")
    con.commit()
    con.close()
    from bus import ConfigError

    with pytest.raises(ConfigError, match="newer than this taskbus"):
        async with Store(db_path):
            pass
