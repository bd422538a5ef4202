"""The reliability suite at CI scale (``TASKBUS_CHAOS_SCALE=full`` for the full numbers;
``scripts/chaos`` runs the same scenarios outside pytest and prints the whole table).

Every scenario runs the real stack in separate processes (nats-server with file storage,
runners with bwrap and Docker, the audit subscriber, the MCP HTTP server, the scripted
model) and passes only when nothing was lost, run twice, left behind, overspent or let out.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from chaos_all import ALL
from ci_guard import require
from report import Row, markdown
from scenarios import env_scale

pytestmark = pytest.mark.usefixtures("require_bwrap", "require_claude")


def _assert_pass(row: Row) -> None:
    table = markdown([row])
    notes = "\n".join(row.notes[:30])
    assert row.verdict == "PASS", f"{row.failures}\n{table}\n{notes}"


def _needs_root() -> None:
    require(os.geteuid() == 0, "root", "root is needed to mount a small tmpfs on the data dir")


async def test_under_load_every_task_finishes_every_event_is_audited_once_and_budgets_match_spend(
    tmp_path: Path, require_docker: None
) -> None:
    row = await ALL["load"](tmp_path, env_scale())
    _assert_pass(row)
    assert row.finished.get("succeeded") == row.submitted, row.finished


async def test_runners_killed_mid_task_leave_no_silent_or_twice_run_task_and_no_sandbox(tmp_path: Path, require_docker: None) -> None:
    row = await ALL["runner-kill"](tmp_path, env_scale())
    _assert_pass(row)
    assert row.faults >= 1, "at least one runner was killed with a task running"


async def test_a_nats_server_restart_mid_load_loses_no_acknowledged_job_or_event(tmp_path: Path) -> None:
    row = await ALL["nats-restart"](tmp_path, env_scale())
    _assert_pass(row)
    assert row.faults == 1


async def test_a_killed_audit_subscriber_catches_up_and_its_chain_verifies(tmp_path: Path) -> None:
    row = await ALL["audit-kill"](tmp_path, env_scale())
    _assert_pass(row)
    assert any(n.startswith("audit verify: {'ok': True") for n in row.notes), row.notes


async def test_after_a_server_kill_get_task_returns_each_result_and_reservations_are_settled(tmp_path: Path) -> None:
    row = await ALL["server-kill"](tmp_path, env_scale())
    _assert_pass(row)
    assert row.finished == {"succeeded": row.submitted}, row.finished


async def test_a_full_data_dir_refuses_new_work_clearly_and_recovers_when_space_returns(tmp_path: Path) -> None:
    _needs_root()
    row = await ALL["disk-full"](tmp_path, env_scale())
    _assert_pass(row)
    assert row.rejected >= 1, row.notes


_HOSTILE_INPUT: dict[str, Row] = {}


async def _hostile_input(tmp_path: Path) -> Row:
    """One run of the scenario shared by the two tests below (it is the slow part)."""
    if "row" not in _HOSTILE_INPUT:
        _HOSTILE_INPUT["row"] = await ALL["hostile-input"](tmp_path, env_scale())
    return _HOSTILE_INPUT["row"]


async def test_hostile_input_on_every_subject_and_tool_is_rejected_clearly_and_crashes_nothing(tmp_path: Path) -> None:
    row = await _hostile_input(tmp_path)
    failures = [f for f in row.failures if not f.startswith("state_changes")]
    assert not failures, f"{failures}\n{markdown([row])}\n" + "\n".join(row.notes[:30])
    assert row.rejected > 100, row.notes


async def test_hostile_input_leaves_no_task_recorded_and_no_budget_reserved(tmp_path: Path) -> None:
    row = await _hostile_input(tmp_path)
    assert row.state_changes == 0, "\n".join(n for n in row.notes if "rows before" in n or "accepted" in n)


async def test_a_hostile_agent_is_contained_on_both_backends_and_blocked_commands_are_audited(tmp_path: Path, require_docker: None) -> None:
    row = await ALL["hostile-agent"](tmp_path, env_scale())
    _assert_pass(row)
    backends = {d["backend"] for d in row.details}
    assert backends == {"bwrap", "docker"}
    for step in row.details:
        assert step["outcome"] != "ESCAPED", step
    audited = {d["step"] for d in row.details if d["outcome"].startswith("audited")}
    assert {"network tool to a host port", "sudo", "fork bomb (classic)", "Docker socket (named)"} <= audited, audited


def test_scripts_chaos_starts_from_any_folder(tmp_path: Path) -> None:
    """`scripts/chaos` imports the harness outside pytest: the project's packages, not the test
    folders of the same names (tests/bus once shadowed bus and every run failed at import)."""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, str(root / "tests" / "chaos" / "run_chaos.py"), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "--cluster" in done.stdout
