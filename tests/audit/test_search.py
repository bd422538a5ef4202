"""`taskbus audit search` returns exactly the rows matching type, key, task, time range and text."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from audit_helpers import every_event, fill, invoke, past

from bus import AuditNotice, Settings, new_task_id


@pytest.fixture
def log(db: Path) -> dict[str, str]:
    """Task A (key tb_alice, 3 h ago): rows 1-10; task B (tb_bob, 30 min ago): 11-20;
    an auth failure notice by tb_eve (10 min ago): row 21."""
    a, b = new_task_id(), new_task_id()
    fill(db, every_event(a, key_id="tb_alice", ts=past(hours=3)) + every_event(b, key_id="tb_bob", ts=past(minutes=30)))
    fill(
        db,
        [AuditNotice(kind="auth_failure", actor="tb_eve", ts=past(minutes=10), code="unknown_key", detail={"reason": "no such key"})],
        stream="audit",
    )
    return {"a": a, "b": b}


def ids(settings: Settings, *args: str) -> list[int]:
    result = invoke(settings, "audit", "search", "--json", *args)
    assert result.exit_code == 0, result.output
    return [row["id"] for row in json.loads(result.stdout)]


def test_search_by_event_type_returns_exactly_those_events(settings: Settings, log: dict[str, str]):
    assert ids(settings, "--type", "tool_call") == [4, 14]
    assert ids(settings, "--type", "tool_call", "--type", "finished") == [4, 10, 14, 20]
    assert ids(settings, "--type", "tool_denied") == [7, 17]  # a security kind
    assert ids(settings, "--type", "auth_failure") == [21]  # a notice kind


def test_search_by_key_returns_every_row_of_that_keys_tasks(settings: Settings, log: dict[str, str]):
    assert ids(settings, "--key", "tb_alice") == list(range(1, 11))
    assert ids(settings, "--key", "tb_eve") == [21]
    assert ids(settings, "--key", "tb_nobody") == []


def test_search_by_task_returns_that_tasks_rows_in_order(settings: Settings, log: dict[str, str]):
    result = invoke(settings, "audit", "search", "--json", "--task", log["b"])
    rows = json.loads(result.stdout)
    assert [r["id"] for r in rows] == list(range(11, 21))
    assert [r["seq"] for r in rows] == list(range(1, 11))
    assert rows[3]["event"]["input"] == {"command": "ls -la /workspace"}


def test_search_by_time_range(settings: Settings, log: dict[str, str]):
    assert ids(settings, "--since", "1h") == list(range(11, 22))
    assert ids(settings, "--since", "4h", "--until", "1h") == list(range(1, 11))
    until = past(minutes=20).isoformat()
    assert ids(settings, "--since", "45m", "--until", until) == list(range(11, 21))


def test_search_by_text_uses_the_full_text_index(settings: Settings, log: dict[str, str]):
    assert ids(settings, "--text", "planning the work") == [3, 13]
    assert ids(settings, "--text", "planning", "--task", log["a"]) == [3]
    assert ids(settings, "--text", "ls -la") == [4, 14]  # tool input
    assert ids(settings, "--text", "WebFetch") == [7, 17]  # security detail
    assert ids(settings, "--text", "no such key") == [21]  # notice detail
    assert ids(settings, "--text", 'quote " and OR NOT') == []  # no FTS syntax leaks through


def test_search_filters_combine_and_limit_caps_the_result(settings: Settings, log: dict[str, str]):
    assert ids(settings, "--key", "tb_bob", "--type", "message", "--since", "1h", "--text", "planning") == [13]
    assert ids(settings, "--limit", "3") == [1, 2, 3]


def test_search_with_a_bad_time_says_what_forms_work(settings: Settings, log: dict[str, str]):
    result = invoke(settings, "audit", "search", "--since", "yesterday-ish")
    assert result.exit_code == 1 and "1h" in result.stderr and "ISO" in result.stderr


def test_search_prints_a_table_for_humans(settings: Settings, log: dict[str, str]):
    result = invoke(settings, "audit", "search", "--task", log["a"], "--type", "finished")
    assert result.exit_code == 0 and "1 audit rows" in result.stdout and "all done" in result.stdout


def test_export_writes_every_row_with_its_hashes(settings: Settings, log: dict[str, str], tmp_path: Path):
    out = tmp_path / "audit.jsonl"
    result = invoke(settings, "audit", "export", "--format", "jsonl", "--out", str(out))
    assert result.exit_code == 0, result.output
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["id"] for r in lines] == list(range(1, 22))
    assert all(lines[i]["prev_hash"] == lines[i - 1]["hash"] for i in range(1, len(lines)))
    assert invoke(settings, "audit", "export", "--format", "csv").exit_code == 2
