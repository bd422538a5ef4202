"""The cluster's routes are authenticated: a nats-server that can reach a route port but
lacks the route password is refused and never becomes part of the cluster (a route
would see every message of every account)."""

from __future__ import annotations

import json
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

from bus import EmbeddedNats, free_port

from .conftest import Cluster


def route_names(cluster: Cluster, i: int) -> set[str]:
    node = cluster.nats.nodes[i]
    with urllib.request.urlopen(f"http://{node.host}:{node.monitor_port}/routez", timeout=5) as reply:
        return {r.get("remote_name", "") for r in json.loads(reply.read()).get("routes") or []}


def test_a_server_without_the_route_password_cannot_join_the_cluster(cluster: Cluster, tmp_path: Path) -> None:
    spec = cluster.nats.nodes[0].cluster
    assert spec is not None and spec.password, "the cluster's routes have a password"
    peers = {n.name for n in cluster.nats.nodes[1:]}
    assert peers <= route_names(cluster, 0), "node 0 is routed to the other two"
    intruder_route = f"127.0.0.1:{free_port()}"
    intruder = EmbeddedNats(
        tmp_path / "intruder",
        name="intruder",
        cluster=replace(spec, listen=intruder_route, routes=(spec.routes[0], intruder_route), password="wrong-" + spec.password),
    )
    with intruder:
        deadline = time.monotonic() + 30
        while "authorization" not in intruder.log_path.read_text(errors="replace").lower():
            assert time.monotonic() < deadline, intruder.log_path.read_text()[-2000:]
            time.sleep(0.1)
        assert "intruder" not in route_names(cluster, 0)
        assert peers <= route_names(cluster, 0)
