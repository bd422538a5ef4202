"""The chaos suite on a 3-node NATS cluster with replicas 3 (the real stack in separate
processes: MCP HTTP server, bwrap runners, the audit writer, the scripted model).

- the load scenario: every task finishes, every event is audited once, budgets match spend;
- SIGKILL the NATS node the server is connected to mid-load: the server, runners and audit
  writer reconnect to the other nodes and carry on, no acked job or event is lost, the
  audit chain verifies, and the node rejoins (every stream back to three current copies).

Scale as the chaos suite (TASKBUS_CHAOS_SCALE=full for the full numbers).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "chaos"))

from report import Row, markdown
from scenarios import SCENARIOS, env_scale

pytestmark = pytest.mark.usefixtures("require_bwrap", "require_claude")


def _assert_pass(row: Row) -> None:
    assert row.verdict == "PASS", f"{row.failures}\n{markdown([row])}\n" + "\n".join(row.notes[:30])


async def test_the_load_scenario_on_a_three_node_cluster_loses_nothing(tmp_path: Path, require_docker: None) -> None:
    row = await SCENARIOS["cluster-load"](tmp_path, env_scale())
    _assert_pass(row)
    assert row.finished.get("succeeded") == row.submitted, row.finished
    assert any(n.startswith("replicas: ") for n in row.notes), row.notes


async def test_a_nats_node_sigkilled_mid_load_loses_no_acked_job_or_event_and_rejoins(tmp_path: Path) -> None:
    row = await SCENARIOS["cluster-node-kill"](tmp_path, env_scale())
    _assert_pass(row)
    assert row.faults == 1
    assert row.finished.get("succeeded", 0) + sum(v for k, v in row.finished.items() if k != "succeeded") == row.submitted
    assert any(n.startswith("audit verify: {'ok': True") for n in row.notes), row.notes
    assert any(n.startswith("replicas: ") for n in row.notes), "the killed node rejoined: " + "\n".join(row.notes)
