"""Admission cost per call on a NATS cluster: ``complete`` submitted over the NATS submit
gateway (docs/nats-publishers.md), timed to the ``accepted`` reply, with

- ``single``: one ``taskbus serve`` on one nats-server (replicas 1), the baseline, and
- ``cluster``: three ``taskbus serve`` processes on a 3-node NATS cluster, every stream
  and bucket at replicas 3 (the servers share the submit queue group),

both measured in the same run, at 1 and 16 concurrent publishers. Admission only: no
runner takes the jobs (the work queue holds them). Target: cluster per-call cost at most
2x the single figure (p50 ratio; throughput ratio >= 0.5).

    scripts/bench cluster [--requests 400] [--out bench-results/cluster.json]

The three servers have separate data dirs (the control plane lives in NATS, so a key
made through one is known to all); ``--shared-data`` gives them one data dir instead.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
from _loops import closed_loop
from bench_runner import ms, print_table, write_json

from bus import EmbeddedCluster, EmbeddedNats
from bus._natsauth import credentials_path, read_credentials, server_authorization
from bus._private import private_dir
from bus._tied import spawn_tied

PREFIX = "bench"
ROOT = Path(__file__).resolve().parents[1]
BODY = json.dumps({"prompt": "ping", "model": "claude-haiku-4-5", "max_tokens": 16}).encode()


def taskbus(args: list[str], env: dict[str, str]) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "cli", *args], env=env, capture_output=True, text=True, check=False, timeout=120, cwd=str(ROOT)
    )
    if done.returncode != 0:
        raise SystemExit(f"taskbus {' '.join(args)} failed: {(done.stderr or done.stdout)[-800:]}")
    return done.stdout


def base_env(data: Path, url: str, replicas: int, secret: str, role: str) -> dict[str, str]:
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "TASKBUS_DATA_DIR": str(data),
        "TASKBUS_NATS_URL": url,
        "TASKBUS_SUBJECT_PREFIX": PREFIX,
        "TASKBUS_NATS_CREDENTIALS": str(credentials_path(data, role)),
        "TASKBUS_NATS_REPLICAS": str(replicas),
        "TASKBUS_JOB_SECRET": secret,
        "TASKBUS_UPSTREAM_URL": "http://127.0.0.1:9",
        "TASKBUS_UPSTREAM_API_KEY": "unused",
        "TASKBUS_LOG_LEVEL": "warning",
        "COLUMNS": "200",
    }


def make_key(env: dict[str, str]) -> str:
    """A key whose profile admits everything the benchmark sends (CLI: works on any Store)."""
    taskbus(
        [
            "profiles",
            "update",
            "developer",
            "--max-concurrent",
            "1000000",
            "--rate-limit",
            "100000000",
            "--day",
            "1000000",
            "--month",
            "10000000",
        ],
        env,
    )
    created = json.loads(taskbus(["keys", "create", "--profile", "developer", "--name", "bench", "--json"], env))
    return str(created["key"])


@contextlib.asynccontextmanager
async def servers(datas: list[Path], url: str, replicas: int, secret: str, work: Path) -> AsyncIterator[None]:
    procs = []
    try:
        for i, data in enumerate(datas):
            env = base_env(data, url, replicas, secret, "server")
            with (work / f"server-{i}.log").open("ab") as log:
                procs.append(
                    spawn_tied(
                        [sys.executable, "-m", "cli", "serve", "--transport", "http", "--host", "127.0.0.1", "--port", "0"],
                        env=env,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        stdin=subprocess.DEVNULL,
                        start_new_session=True,
                        cwd=str(ROOT),
                    )
                )
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=30)


async def measure(url: str, data: Path, key: str, requests: int, *, servers_expected: int) -> dict[str, dict[str, float]]:
    creds = read_credentials(credentials_path(data, "cli"))
    nc = await nats.connect(servers=url.split(","), user=creds.user, password=creds.password)
    headers = {"Authorization": f"Bearer {key}"}
    try:

        async def submit() -> None:
            msg = await nc.request(f"{PREFIX}.submit.complete", BODY, headers=headers, timeout=60)
            reply = json.loads(msg.data)
            if reply.get("type") != "accepted":
                raise SystemExit(f"refused: {reply}")

        deadline = time.monotonic() + 120
        while True:  # until the servers answer (each subscribes once its streams are ready)
            try:
                await submit()
                break
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                if time.monotonic() > deadline:
                    raise SystemExit("no server answered the submit subject within 120 s") from None
                await asyncio.sleep(0.5)
        await asyncio.sleep(2 if servers_expected > 1 else 0)  # the last servers join the queue group
        await closed_loop(40, 4, submit)  # warm-up
        out: dict[str, dict[str, float]] = {}
        for concurrency in (1, 16):
            n = requests if concurrency > 1 else max(requests // 4, 50)
            samples, wall = await closed_loop(n, concurrency, submit)
            out[f"c{concurrency}"] = {"p50_ms": ms(samples, 0.5), "p99_ms": ms(samples, 0.99), "per_s": round(n / wall, 1)}
        return out
    finally:
        await nc.close()


async def run_single(work: Path, requests: int) -> dict[str, dict[str, float]]:
    data = private_dir(work / "data")
    secret = uuid.uuid4().hex
    async with EmbeddedNats(work / "nats", authorization=server_authorization(data, PREFIX)) as ns:
        key = make_key(base_env(data, ns.url, 1, secret, "cli"))
        async with servers([data], ns.url, 1, secret, work):
            return await measure(ns.url, data, key, requests, servers_expected=1)


async def run_cluster(work: Path, requests: int, *, shared: bool) -> dict[str, dict[str, float]]:
    datas = [private_dir(work / "data")] if shared else [private_dir(work / f"data{i}") for i in range(3)]
    secret = uuid.uuid4().hex
    authorization = server_authorization(datas[0], PREFIX)
    for other in datas[1:]:  # every server's data dir holds the same NATS users
        private_dir(other / "nats-auth")
        for role in ("server", "cli"):
            credentials_path(other, role).write_bytes(credentials_path(datas[0], role).read_bytes())
    async with EmbeddedCluster(work / "nats", authorization=authorization) as cluster:
        key = make_key(base_env(datas[0], cluster.url, 3, secret, "cli"))
        server_datas = datas * 3 if shared else datas
        async with servers(server_datas, cluster.url, 3, secret, work):
            return await measure(cluster.url, datas[0], key, requests, servers_expected=3)


async def main(args: argparse.Namespace) -> None:
    work = Path(tempfile.mkdtemp(prefix="taskbus-bench-cluster-"))
    single = await run_single(work / "single", args.requests)
    cluster = await run_cluster(work / "cluster", args.requests, shared=args.shared_data)
    rows = []
    results: dict[str, Any] = {"single": single, "cluster": cluster, "shared_data": args.shared_data}
    for c in ("c1", "c16"):
        s, k = single[c], cluster[c]
        ratio_p50 = round(k["p50_ms"] / s["p50_ms"], 2) if s["p50_ms"] else 0.0
        ratio_rate = round(k["per_s"] / s["per_s"], 2) if s["per_s"] else 0.0
        results[f"{c}_p50_ratio"], results[f"{c}_rate_ratio"] = ratio_p50, ratio_rate
        rows.append(
            [
                f"{c[1:]} publisher(s)",
                f"{s['p50_ms']} / {s['p99_ms']} ms, {s['per_s']}/s",
                f"{k['p50_ms']} / {k['p99_ms']} ms, {k['per_s']}/s",
                f"{ratio_p50}x",
                f"{ratio_rate}x",
            ]
        )
    print_table(
        "admission on a 3-node cluster vs one server (same run)",
        [
            "complete admission (NATS submit)",
            "1 server, 1 node, R1 (p50/p99, rate)",
            "3 servers, 3 nodes, R3",
            "p50 ratio (<= 2x)",
            "rate ratio",
        ],
        rows,
    )
    write_json(str(args.out), results)
    print(f"logs in {work}", file=sys.stderr)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--out", type=Path, default=Path("bench-results/cluster.json"))
    parser.add_argument(
        "--shared-data",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="the three servers share one data dir (default: one each)",
    )
    asyncio.run(main(parser.parse_args()))
