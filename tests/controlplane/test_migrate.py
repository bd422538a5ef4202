"""``taskbus migrate``: an old SQLite ``taskbus.db`` imported once into the control plane."""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bus import KeyRevoked, Settings
from cli import app
from profiles import Store, default_profiles
from profiles._keys import display_prefix, hash_key, new_key
from profiles._profiles import encode_profile, profile_from_mapping

# the schema taskbus 0.5 wrote (profiles/_db.py migrations v1 + v2), as an old file has it
OLD_SCHEMA = """
CREATE TABLE profiles (name TEXT PRIMARY KEY, data TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE api_keys (prefix TEXT PRIMARY KEY, hash TEXT NOT NULL UNIQUE, name TEXT, profile TEXT NOT NULL,
    created_at REAL NOT NULL, expires_at REAL, revoked_at REAL, account TEXT, replaced_by TEXT, grace_until REAL);
CREATE TABLE ledger (task_id TEXT PRIMARY KEY, key_id TEXT NOT NULL, amount INTEGER NOT NULL, actual INTEGER,
    state TEXT NOT NULL, day TEXT NOT NULL, month TEXT NOT NULL, created_at REAL NOT NULL, updated_at REAL NOT NULL);
CREATE TABLE tasks (task_id TEXT PRIMARY KEY, key_id TEXT NOT NULL, profile TEXT NOT NULL, kind TEXT NOT NULL,
    status TEXT NOT NULL, reserved REAL NOT NULL DEFAULT 0, cost REAL, model TEXT, created_at REAL NOT NULL,
    updated_at REAL NOT NULL, finished_at REAL, result_summary TEXT, error_code TEXT);
CREATE TABLE key_budgets (account TEXT PRIMARY KEY, day_usd REAL, month_usd REAL, updated_at REAL NOT NULL);
CREATE TABLE rate_events (key_id TEXT NOT NULL, ts REAL NOT NULL);
PRAGMA user_version = 2;
"""


def _old_database(path: Path) -> dict[str, str]:
    """A taskbus.db with two live keys (one with an account budget), a revoked one, an open
    reservation and a settled one today, a settled one of an earlier month, three tasks."""
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    today = datetime.now(UTC)
    day, month = today.strftime("%Y-%m-%d"), today.strftime("%Y-%m")
    keys = {name: new_key() for name in ("ops", "dev", "gone")}
    db = sqlite3.connect(path)
    db.executescript(OLD_SCHEMA)
    ops = profile_from_mapping("ops", {"models": ["claude-haiku-4-5"], "tools": ["Read"], "budget_day_usd": 5.0})
    for profile in [*default_profiles().values(), ops]:
        db.execute("INSERT INTO profiles VALUES (?, ?, ?, ?)", (profile.name, encode_profile(profile), now, now))
    for name, plaintext in keys.items():
        prefix = display_prefix(plaintext)
        db.execute(
            "INSERT INTO api_keys VALUES (?, ?, ?, ?, ?, NULL, ?, ?, NULL, NULL)",
            (prefix, hash_key(plaintext), name, "ops" if name == "ops" else "developer", now, now if name == "gone" else None, prefix),
        )
    ops_prefix = display_prefix(keys["ops"])
    db.execute("INSERT INTO key_budgets VALUES (?, 4.0, NULL, ?)", (ops_prefix, now))
    for task_id, amount, actual, state, d, m, status in (
        ("t_open", 1_500_000, None, "reserved", day, month, "running"),
        ("t_done", 1_000_000, 250_000, "settled", day, month, "succeeded"),
        ("t_old", 2_000_000, 2_000_000, "settled", "2020-01-02", "2020-01", "succeeded"),
    ):
        db.execute("INSERT INTO ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", (task_id, ops_prefix, amount, actual, state, d, m, now, now))
        db.execute(
            "INSERT INTO tasks VALUES (?, ?, 'ops', 'complete', ?, ?, ?, 'claude-haiku-4-5', ?, ?, ?, ?, NULL)",
            (
                task_id,
                ops_prefix,
                status,
                amount / 1e6,
                None if actual is None else actual / 1e6,
                now,
                now,
                None if status == "running" else now,
                "ok" if status == "succeeded" else None,
            ),
        )
    db.execute("INSERT INTO rate_events VALUES (?, ?)", (ops_prefix, now))
    db.commit()
    db.close()
    return keys


def _migrate(settings: Settings, *args: str):
    env = {
        "TASKBUS_DATA_DIR": settings.data_dir,
        "TASKBUS_NATS_URL": settings.nats_url,
        "TASKBUS_SUBJECT_PREFIX": settings.subject_prefix,
        "TASKBUS_CONFIG": None,
    }
    return CliRunner().invoke(app, ["migrate", *args], env=env)


async def test_an_old_database_is_imported_once_with_a_report_and_left_as_it_was(settings: Settings) -> None:
    path = settings.data_path / "taskbus.db"
    keys = _old_database(path)
    before = hashlib.sha256(path.read_bytes()).hexdigest()

    first = await asyncio.to_thread(_migrate, settings, "--json")

    assert first.exit_code == 0, first.output
    report = json.loads(first.stdout)
    assert report["already"] is False
    assert report["imported"] == {
        "profiles": 5,
        "keys": 3,
        "budget overrides": 1,
        "open reservations": 1,
        "closed reservations this month": 1,
        "tasks": 3,
    }
    assert report["skipped"] == {"closed reservations": 1}
    assert "earlier month" in report["reasons"]["closed reservations"] and "rate windows" in report["reasons"]

    async with Store.for_settings(settings) as store:
        ops = await store.authenticate(keys["ops"])  # the key works: its hash came over
        assert ops.profile == "ops" and (await store.get_profile("ops")).budget_day_usd == 5.0
        with pytest.raises(KeyRevoked):
            await store.authenticate(keys["gone"])
        budget = await store.remaining_budget(ops.prefix)
        assert budget.override and budget.day.limit_usd == 4.0  # the account's own budget
        assert budget.day.used_usd == pytest.approx(1.75) and budget.running == 1  # open 1.50 + settled 0.25
        assert (await store.get_task("t_done")).cost_usd == 0.25
        assert [t.task_id for t in await store.list_tasks(None, status="running")] == ["t_open"]
        settled = await store.finish_task("t_open", 0.5, "succeeded")  # the open reservation settles as before
        assert settled.status == "succeeded"
        assert (await store.remaining_budget(ops.prefix)).day.used_usd == pytest.approx(0.75)

    again = await asyncio.to_thread(_migrate, settings)
    assert again.exit_code == 0, again.output
    assert "was already imported" in again.stderr and "keys: 3" in again.stdout
    assert hashlib.sha256(path.read_bytes()).hexdigest() == before  # nothing renamed, nothing written
    assert sorted(p.name for p in settings.data_path.iterdir() if p.name.startswith("taskbus.db")) == ["taskbus.db"]


def test_migrate_without_a_file_says_so(settings: Settings) -> None:
    result = _migrate(settings)
    assert result.exit_code == 1
    assert "does not exist: nothing to import" in result.stderr
