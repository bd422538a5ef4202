"""`taskbus doctor` on the 3-node cluster: each stream's replicas against the setting, the
cluster, and a node that is down named with what to do."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

from typer.testing import CliRunner

from bus import Bus
from cli import app

from .conftest import Cluster


def doctor(cluster: Cluster, replicas: int = 3) -> dict[str, dict[str, Any]]:
    """``taskbus doctor --json`` as the operator (the cli role of taskbus up)."""
    result = CliRunner().invoke(
        app,
        ["doctor", "--json"],
        env={
            "TASKBUS_DATA_DIR": str(cluster.data),
            "TASKBUS_NATS_URL": cluster.url,
            "TASKBUS_NATS_CREDENTIALS": cluster.credentials("cli"),
            "TASKBUS_SUBJECT_PREFIX": cluster.prefix,
            "TASKBUS_NATS_REPLICAS": str(replicas),
        },
    )
    assert result.exit_code in (0, 1), result.output
    return {c["name"]: c for c in json.loads(result.stdout)["checks"]}


def ensure_streams(cluster: Cluster) -> None:
    async def run() -> None:
        async with await Bus.for_settings(cluster.settings("server")) as bus:
            await bus.ensure_streams()

    asyncio.run(run())


def test_doctor_reports_the_cluster_and_every_stream_at_three_replicas_with_current_followers(cluster: Cluster) -> None:
    ensure_streams(cluster)
    checks = doctor(cluster)
    assert checks["nats_cluster"]["ok"] is True
    assert cluster.nats.name in checks["nats_cluster"]["detail"]
    streams = {name: c for name, c in checks.items() if name.startswith("replicas ")}
    assert f"replicas {cluster.prefix.upper()}_JOBS" in streams, sorted(streams)
    assert len(streams) >= 6, sorted(streams)
    for check in streams.values():
        assert check["ok"] is True, check
        assert check["detail"].startswith("R3 (setting 3), leader "), check
        assert check["detail"].count(" current") == 2, check


def test_doctor_flags_a_setting_above_the_streams_replicas_and_says_what_raises_them(cluster: Cluster) -> None:
    ensure_streams(cluster)
    jobs = doctor(cluster, replicas=5)[f"replicas {cluster.prefix.upper()}_JOBS"]
    assert jobs["ok"] is False and "R3 (setting 5)" in jobs["detail"]
    assert "TASKBUS_NATS_REPLICAS" in jobs["fix"]


def test_doctor_names_a_killed_node_as_offline_and_says_to_start_it(cluster: Cluster) -> None:
    ensure_streams(cluster)
    victim = cluster.nats.nodes[2].name
    cluster.kill(2)
    try:
        deadline = time.monotonic() + 60  # right after the kill a stream led by that node has no leader yet
        while True:
            streams = {n: c for n, c in doctor(cluster).items() if n.startswith("replicas ")}
            flagged = [c for c in streams.values() if not c["ok"]]
            named = [c for c in flagged if f"{victim} OFFLINE" in c["detail"] and victim in c["fix"]]
            if named or time.monotonic() > deadline:
                break
            for c in flagged:
                assert "start the stopped NATS nodes" in c["fix"], c
            time.sleep(0.5)
        assert named, flagged
    finally:
        cluster.restart(2)
    deadline = time.monotonic() + 60  # the restarted node catches up: its copies are "behind" for a moment
    while True:
        after = {n: c for n, c in doctor(cluster).items() if n.startswith("replicas ")}
        if all(c["ok"] for c in after.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert all(c["ok"] for c in after.values()), {n: c["detail"] for n, c in after.items() if not c["ok"]}
