"""Which tasks share a warm agent: the class holds what Claude Code and its sandbox are
started with, nothing of the task; the first message carries the task's model."""

from __future__ import annotations

import json
from typing import Any

import bus
from sandbox._runner._claude import ClaudeOutcome, first_message, translate
from sandbox._runner._warm import class_template, warm_class, warm_eligible


def _policy(**fields: Any) -> bus.Policy:
    base: dict[str, Any] = {
        "task_id": "t_1",
        "kind": "task",
        "key_id": "tb_a",
        "profile": "dev",
        "model": "claude-sonnet-4-6",
        "models": ["claude-sonnet-4-6"],
        "tools": ["Bash", "Read"],
        "max_cost_usd": 1.0,
    }
    return bus.Policy(**(base | fields))


def test_tasks_differing_only_in_what_is_applied_per_task_share_a_class() -> None:
    a = _policy()
    same = _policy(
        task_id="t_2",
        key_id="tb_b",
        profile="other",
        model="claude-haiku-4-5",
        models=["claude-haiku-4-5"],
        max_cost_usd=0.01,
        agents=["x"],
        skills=["y"],
        tools=["Read", "Bash"],
    )
    assert warm_class(a) == warm_class(same)
    for change in ({"tools": ["Read"]}, {"max_turns": 3}, {"memory_mb": 2048}, {"timeout_s": 30}, {"cpus": 2.0}):
        assert warm_class(_policy(**change)) != warm_class(a), change


def test_a_class_template_keeps_nothing_of_the_task() -> None:
    task = _policy(project_root="/srv/p", fs_access="readonly", max_cost_usd=3.0, nonce="n-secret", agents=["reviewer"], skills=["pdf"])
    template = class_template(task, task_id="warm-x")
    encoded = bus.encode(template).decode()
    for leak in ("t_1", "tb_a", "dev", "/srv/p", "n-secret", "reviewer", "pdf"):
        assert leak not in encoded, leak
    assert warm_class(template) == warm_class(task)


def test_tasks_with_a_catalog_or_a_project_mount_start_cold() -> None:
    assert warm_eligible(_policy())
    assert not warm_eligible(_policy(project_root="/srv/p", fs_access="readonly"))
    assert not warm_eligible(_policy(catalog=[bus.CatalogRef(kind="agent", name="r", sha256="0" * 64)]))
    assert not warm_eligible(_policy(network="none"))


def test_the_first_message_sets_the_model_only_when_it_differs() -> None:
    same = [json.loads(line) for line in first_message("hi", model="m1", started_model="m1").splitlines()]
    other = [json.loads(line) for line in first_message("hi", model="m2", started_model="m1").splitlines()]
    assert [d["type"] for d in same] == ["user"] and same[0]["message"]["content"] == "hi"
    assert [d["type"] for d in other] == ["control_request", "user"]
    assert other[0]["request"] == {"subtype": "set_model", "model": "m2"}


def test_the_answer_to_set_model_is_no_event_unless_it_failed() -> None:
    ok = json.dumps({"type": "control_response", "response": {"subtype": "success", "request_id": "taskbus-model"}})
    bad = json.dumps({"type": "control_response", "response": {"subtype": "error", "request_id": "taskbus-model"}})
    assert translate(ok, ClaudeOutcome()) == []
    assert len(translate(bad, ClaudeOutcome())) == 1


def test_mcp_progress_says_when_a_task_got_a_warm_agent() -> None:
    from server._mcp_results import progress_message

    now = bus.utcnow()
    warm = bus.Started(task_id="t_1", seq=2, ts=now, runner_id="r", backend="bwrap", warm=True)
    cold = bus.Started(task_id="t_1", seq=2, ts=now, runner_id="r", backend="bwrap")
    assert "warm agent" in (progress_message(warm, cost=0.0, elapsed=0.1) or "")
    assert "warm agent" not in (progress_message(cold, cost=0.0, elapsed=0.1) or "")
