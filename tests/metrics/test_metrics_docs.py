"""docs/metrics.md documents every metric both processes export, and the example Grafana
dashboard queries only documented metrics."""

from __future__ import annotations

import json
import re
from pathlib import Path

from sandbox._runner._metrics import RunnerMetrics
from server._metrics import ServerMetrics

DOCS = Path(__file__).resolve().parents[2] / "docs"


def exported_names(registry) -> set[str]:
    names = set()
    for family in registry.collect():
        names.add(family.name + ("_total" if family.type == "counter" else ""))
    return names


def test_every_exported_metric_is_documented() -> None:
    documented = set(re.findall(r"`(taskbus_[a-z_]+)`", (DOCS / "metrics.md").read_text()))
    exported = exported_names(ServerMetrics().registry) | exported_names(RunnerMetrics("r", "bwrap").registry)
    assert len(exported) > 20
    assert exported - documented == set()
    assert documented - exported == set()


def test_the_grafana_dashboard_queries_only_exported_metrics() -> None:
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    used = {re.sub(r"_(bucket|sum|count)$", "", m) for e in exprs for m in re.findall(r"taskbus_[a-z_]+", e)}
    exported = exported_names(ServerMetrics().registry) | exported_names(RunnerMetrics("r", "bwrap").registry)
    assert used and used <= exported
