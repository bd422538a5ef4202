"""Tampering with the SQLite file by hand is caught by `taskbus audit verify`, which names the row."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

import pytest
from audit_helpers import every_event, fill, invoke, past

from audit import row_hash
from audit._chain import CONTENT_COLUMNS
from bus import Settings, new_task_id


@pytest.fixture
def chain(db: Path) -> Path:
    """20 rows: two tasks of every event type."""
    fill(db, every_event(new_task_id()) + every_event(new_task_id()))
    return db


def tamper(db: Path, *statements: tuple[str, tuple]) -> None:
    conn = sqlite3.connect(db)
    try:
        for sql, args in statements:
            conn.execute(sql, args)
        conn.commit()
    finally:
        conn.close()


def verify_json(settings: Settings) -> tuple[int, dict]:
    result = invoke(settings, "audit", "verify", "--json")
    return result.exit_code, json.loads(result.stdout)


def test_an_untouched_log_verifies(settings: Settings, chain: Path):
    code, doc = verify_json(settings)
    assert code == 0 and doc["ok"] is True and doc["rows"] == 20 and doc["problem"] is None
    result = invoke(settings, "audit", "verify")
    assert result.exit_code == 0 and "chain ok: 20 rows" in result.stdout


def test_verify_names_a_row_whose_content_was_altered(settings: Settings, chain: Path):
    tamper(chain, ("UPDATE audit SET body = replace(body, 'ls -la', 'rm -rf') WHERE id = 4", ()))
    result = invoke(settings, "audit", "verify")
    assert result.exit_code == 1
    assert "row 4 was altered" in result.stderr
    code, doc = verify_json(settings)
    assert code == 1 and doc["problem"]["row"] == 4 and doc["problem"]["kind"] == "altered"


def test_verify_names_a_row_replaced_with_a_recomputed_hash(settings: Settings, chain: Path):
    conn = sqlite3.connect(chain)
    cols = ", ".join(CONTENT_COLUMNS)
    row = conn.execute(f"SELECT {cols}, prev_hash FROM audit WHERE id = 4").fetchone()
    content = (*row[:-2], row[-2].replace("ls -la", "rm -rf"))
    conn.execute("UPDATE audit SET body = ?, hash = ? WHERE id = 4", (content[-1], row_hash(row[-1], content)))
    conn.commit()
    conn.close()
    code, doc = verify_json(settings)
    assert code == 1 and doc["problem"]["row"] == 4 and doc["problem"]["kind"] == "altered"


def test_verify_names_a_deleted_row(settings: Settings, chain: Path):
    tamper(chain, ("DELETE FROM audit WHERE id = 5", ()))
    code, doc = verify_json(settings)
    assert code == 1 and doc["problem"]["row"] == 5 and doc["problem"]["kind"] == "deleted"
    assert "row 5 was deleted" in invoke(settings, "audit", "verify").stderr


def test_verify_names_deleted_rows_at_the_end_of_the_log(settings: Settings, chain: Path):
    tamper(chain, ("DELETE FROM audit WHERE id >= 19", ()))
    code, doc = verify_json(settings)
    assert code == 1 and doc["problem"]["row"] == 19 and doc["problem"]["kind"] == "deleted"


def test_verify_names_a_row_inserted_in_the_middle_with_a_valid_hash(settings: Settings, chain: Path):
    conn = sqlite3.connect(chain)
    cols = ", ".join(CONTENT_COLUMNS)
    # make room at id 6 (renumber 6.. to 7..), then forge a row that links correctly to row 5
    conn.execute("UPDATE audit SET id = -id WHERE id >= 6")
    conn.execute("UPDATE audit SET id = -id + 1 WHERE id < 0")
    src = conn.execute(f"SELECT {cols} FROM audit WHERE id = 5").fetchone()
    prev = conn.execute("SELECT hash FROM audit WHERE id = 5").fetchone()[0]
    forged = (src[0], 99_999, *src[2:9], '{"type":"log","line":"nothing to see"}')
    conn.execute(
        f"INSERT INTO audit (id, {cols}, prev_hash, hash) VALUES (6, {', '.join('?' * len(forged))}, ?, ?)",
        (*forged, prev, row_hash(prev, forged)),
    )
    conn.commit()
    conn.close()
    code, doc = verify_json(settings)
    assert code == 1 and doc["problem"]["row"] == 6 and doc["problem"]["kind"] == "inserted"
    assert "row 6 was inserted" in invoke(settings, "audit", "verify").stderr


def test_verify_names_a_row_appended_after_the_recorded_head(settings: Settings, chain: Path):
    conn = sqlite3.connect(chain)
    cols = ", ".join(CONTENT_COLUMNS)
    src = conn.execute(f"SELECT {cols}, hash FROM audit WHERE id = 20").fetchone()
    forged = (src[0], 99_999, *src[2:10])
    conn.execute(
        f"INSERT INTO audit (id, {cols}, prev_hash, hash) VALUES (21, {', '.join('?' * len(forged))}, ?, ?)",
        (*forged, src[-1], row_hash(src[-1], forged)),
    )
    conn.commit()
    conn.close()
    code, doc = verify_json(settings)
    assert code == 1 and doc["problem"]["row"] == 21 and doc["problem"]["kind"] == "inserted"


def test_verify_without_a_database_says_how_to_get_one(settings: Settings):
    result = invoke(settings, "audit", "verify")
    assert result.exit_code == 1 and "taskbus audit run" in result.stderr


def test_prune_keeps_the_chain_verifiable_through_a_checkpoint(settings: Settings, db: Path):
    old_task, new_task = new_task_id(), new_task_id()
    fill(db, every_event(old_task, ts=past(days=40)) + every_event(new_task, ts=past(minutes=5)))
    result = invoke(settings, "audit", "prune", "--older-than", "30d", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["rows"] == 10 and doc["checkpoint_row"] == 10
    code, ver = verify_json(settings)
    assert code == 0 and ver["rows"] == 10 and ver["first_row"] == 11 and ver["checkpoint_row"] == 10
    # the full-text index forgot the pruned rows and still finds the rest
    found = json.loads(invoke(settings, "audit", "search", "--text", "planning", "--json").stdout)
    assert [r["task_id"] for r in found] == [new_task]
    # the chain goes on after a prune
    fill(db, every_event(new_task_id()), start_seq=21)
    code, ver = verify_json(settings)
    assert code == 0 and ver["rows"] == 20


def test_prune_refuses_to_run_on_a_broken_chain(settings: Settings, db: Path):
    fill(db, every_event(new_task_id(), ts=past(days=40)))
    tamper(db, ("UPDATE audit SET key_id = 'tb_someone_else' WHERE id = 3", ()))
    result = invoke(settings, "audit", "prune", "--older-than", "30d")
    assert result.exit_code == 1 and "not pruning" in result.stderr and "row 3" in result.stderr
    assert sqlite3.connect(db).execute("SELECT count(*) FROM audit").fetchone()[0] == 10


def test_prune_rejects_a_duration_it_cannot_read(settings: Settings, db: Path):
    fill(db, every_event(new_task_id()))
    result = invoke(settings, "audit", "prune", "--older-than", "a month")
    assert result.exit_code == 1 and "30d" in result.stderr
