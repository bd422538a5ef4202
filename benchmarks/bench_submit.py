"""Benchmark of the NATS submit path: ``complete`` jobs submitted all at once through the
submit gateway (docs/nats-publishers.md) to a local stack with the scripted model.

Reports accepted/s (500 requests sent at once; the run ends when the last reply is in),
reply p50/p99, and that every job finished. Baseline measured in the same run: the same
500 requests answered by a trivial NATS request/reply responder in its own process (the
transport's own cost). ``--soak N`` then submits N more jobs in rounds of 1,000, each
round once the previous one has finished (so every round starts from an idle stack and
only the history differs), and reports the last round's accepted/s against the first
(flat as the registry, the ledger and the rate windows grow) and the server's resident
memory after the first round and at the end. Per round it also records what grows: the
CPU seconds each process spent in the burst (``/proc``), every process's RSS, and each
stream's messages, deleted sequences and subjects (nats-server's monitoring ``/jsz``); the
summary adds the median rate of the first and last three rounds and the whole stack's CPU
seconds per 1,000 admissions (a machine shared with other work moves the rates, much less
the CPU per admission).

Processes: nats-server (embedded), the scripted model, one runner, the server
(``taskbus serve --transport none``: the gateway only), the baseline responder, and with
``--audit`` the audit writer; the publisher runs in this process.

    scripts/bench submit [--jobs 500] [--soak 20000] [--audit] [--out bench-results/submit.json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

import nats  # noqa: E402 (after the sys.path lines above: run as a script)
from bench_mcp import free_port, percentile, stack_env, wait_port  # noqa: E402 (after the sys.path lines above: run as a script)

from bus import (  # noqa: E402 (after the sys.path lines above: run as a script)
    EmbeddedNats,
    Settings,
    Subjects,
    SubmitAccepted,
    decode_reply,
    encode,
    new_task_id,
)
from profiles import Store  # noqa: E402 (after the sys.path lines above: run as a script)

TARGET_ACCEPTED_PER_S = 400.0
TARGET_P99_MS = 1000.0
TARGET_SOAK_RATIO = 0.9
TARGET_RSS_GROWTH_MB = 10.0

RESPONDER = textwrap.dedent(
    """
    import asyncio, sys
    import nats

    async def main():
        nc = await nats.connect(sys.argv[1])
        async def answer(msg):
            await msg.respond(sys.argv[3].encode())
        await nc.subscribe(sys.argv[2], queue="bench", cb=answer)
        await nc.flush()
        print("ready", flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far (0.0 once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def machine_busy_s() -> float:
    """CPU seconds every process on the machine has spent so far (``/proc/stat``: all but idle and iowait)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / CLOCK_TICKS


def jsz(monitor_port: int) -> dict[str, dict[str, int]]:
    """Each stream's messages, bytes, deleted sequences, subjects and consumers (nats-server's ``/jsz``)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{monitor_port}/jsz?streams=1", timeout=10) as reply:
        data = json.load(reply)
    out: dict[str, dict[str, int]] = {}
    for account in data.get("account_details", []):
        for stream in account.get("stream_detail", []):
            state = stream.get("state", {})
            out[stream["name"]] = {
                "messages": state.get("messages", 0),
                "bytes": state.get("bytes", 0),
                "first_seq": state.get("first_seq", 0),
                "last_seq": state.get("last_seq", 0),
                "num_deleted": state.get("num_deleted", 0),
                "num_subjects": state.get("num_subjects", 0),
                "consumers": state.get("consumer_count", 0),
            }
    return out


def steadiness(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    """What the soak's rounds show beside the first and the last: the median rate of the first
    and last three (one round is one load burst of the shared machine away from noise), and
    the CPU seconds all the stack's processes spent per round's burst (what admission costs,
    whatever the other load on the machine), and nats-server's RSS."""
    first, last = rounds[: min(3, len(rounds))], rounds[-min(3, len(rounds)) :]
    rate = [r["accepted_per_s"] for r in rounds]
    cpu = [sum(r["burst_cpu_s"].values()) for r in rounds]
    return {
        "median_first3_per_s": statistics.median(rate[: len(first)]),
        "median_last3_per_s": statistics.median(rate[-len(last) :]),
        "median_ratio": statistics.median(rate[-len(last) :]) / statistics.median(rate[: len(first)]),
        "cpu_s_per_1000_first3": statistics.median(cpu[: len(first)]),
        "cpu_s_per_1000_last3": statistics.median(cpu[-len(last) :]),
        "cpu_ratio": statistics.median(cpu[-len(last) :]) / statistics.median(cpu[: len(first)]),
        "nats_rss_first_mb": rounds[0]["rss_mb"]["nats"],
        "nats_rss_end_mb": rounds[-1]["rss_mb"]["nats"],
        "others_cores_first3": statistics.median(r["others_cpu_s"] / r["wall_s"] for r in first),
        "others_cores_last3": statistics.median(r["others_cpu_s"] / r["wall_s"] for r in last),
        "rss_first_round_mb": rounds[0]["rss_mb"],
        "rss_last_round_mb": rounds[-1]["rss_mb"],
    }


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def burst(nc: Any, subject: str, jobs: int, headers: dict[str, str], body: bytes) -> dict[str, Any]:
    """``jobs`` requests sent at once; accepted/s over the time to the last reply."""
    latencies: list[float] = []
    task_ids: list[str] = []
    refused: dict[str, int] = {}

    async def one() -> None:
        start = time.perf_counter()
        msg = await nc.request(subject, body, headers=headers, timeout=120)
        latencies.append((time.perf_counter() - start) * 1000)
        reply = decode_reply(msg.data)
        if isinstance(reply, SubmitAccepted):
            task_ids.append(reply.task_id)
        else:
            refused[reply.code] = refused.get(reply.code, 0) + 1

    started = time.perf_counter()
    await asyncio.gather(*(one() for _ in range(jobs)))
    wall = time.perf_counter() - started
    return {
        "jobs": jobs,
        "accepted": len(task_ids),
        "refused": refused,
        "accepted_per_s": len(task_ids) / wall,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "wall_s": wall,
        "task_ids": task_ids,
    }


async def all_finished(settings: Any, task_ids: list[str], timeout_s: float) -> dict[str, int]:
    """Statuses of ``task_ids`` once none is live (or when ``timeout_s`` is over)."""
    deadline = time.monotonic() + timeout_s
    async with Store.for_settings(settings, actor="bench") as store:
        while True:
            statuses: dict[str, int] = {}
            for start in range(0, len(task_ids), 200):
                records = await asyncio.gather(*(store.get_task(t) for t in task_ids[start : start + 200]))
                for r in records:
                    statuses[r.status] = statuses.get(r.status, 0) + 1
            if not any(s in statuses for s in ("accepted", "running")) or time.monotonic() > deadline:
                return statuses
            await asyncio.sleep(0.5)


async def make_key(settings: Any) -> str:
    async with Store.for_settings(settings, actor="bench") as store:
        await store.apply_toml(
            textwrap.dedent(
                """
            [profiles.bench]
            kinds = ["complete"]
            models = ["claude-haiku-4-5"]
            max_concurrent = 100000
            max_cost_per_task_usd = 0.05
            rate_limit_per_min = 1000000000
            """
            )
        )
        return (await store.create_key("bench"))[0]


async def measure(args: argparse.Namespace, env: dict[str, str], pids: dict[str, int], monitor_port: int) -> dict[str, Any]:
    server_pid = pids["server"]
    settings = Settings.load(env)
    subjects = Subjects(settings.subject_prefix)
    key = env["BENCH_KEY"]
    body = json.dumps({"prompt": "[script:hello] benchmark", "model": "claude-haiku-4-5"}).encode()
    headers = {"Authorization": f"Bearer {key}"}
    nc = await nats.connect(settings.nats_url)
    try:
        deadline = time.monotonic() + 120
        while True:  # the gateway subscribes once the server is up: poll until it answers
            try:
                await nc.request(subjects.submit("complete"), b"{}", timeout=5)
                break
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                if time.monotonic() > deadline:
                    raise SystemExit("the server's submit gateway did not answer within 120 s") from None
                await asyncio.sleep(0.2)
        await burst(nc, subjects.submit("complete"), 20, headers, body)  # warm-up (connections, caches)
        baseline = await burst(nc, "bench.baseline", args.jobs, {}, body)
        ours = await burst(nc, subjects.submit("complete"), args.jobs, headers, body)
        statuses = await all_finished(settings, ours["task_ids"], timeout_s=600)
        result: dict[str, Any] = {"baseline": baseline, "taskbus": ours, "finished": statuses}
        if args.soak:
            rounds = []
            rss_after_warmup = rss_mb(server_pid)
            for index in range(max(1, args.soak // 1000)):
                before, busy = {name: cpu_s(pid) for name, pid in pids.items()}, machine_busy_s()
                r = await burst(nc, subjects.submit("complete"), 1000, headers, body)
                burst_cpu = {name: round(cpu_s(pid) - before[name], 2) for name, pid in pids.items()}
                burst_s = r["wall_s"]
                others_s = round(machine_busy_s() - busy - sum(burst_cpu.values()), 2)
                done = await all_finished(settings, r["task_ids"], timeout_s=600)
                streams = jsz(monitor_port)
                rounds.append(
                    {
                        **{k: v for k, v in r.items() if k != "task_ids"},
                        "finished": done,
                        "burst_cpu_s": burst_cpu,
                        "others_cpu_s": others_s,
                        "stack_cores": round(sum(burst_cpu.values()) / burst_s, 2),
                        "rss_mb": {name: round(rss_mb(pid), 1) for name, pid in pids.items()},
                        "streams": streams,
                    }
                )
                kv = {name.removeprefix("KV_bench-"): st for name, st in streams.items() if name.startswith("KV_")}
                print(
                    f"  soak round {index + 1}: {r['accepted_per_s']:.0f} accepted/s, p99 {r['p99_ms']:.0f} ms, "
                    f"server RSS {rss_mb(server_pid):.1f} MB; CPU s in the burst: "
                    + ", ".join(f"{name} {cpu:.1f}" for name, cpu in burst_cpu.items())
                    + "; KV msgs/deleted: "
                    + ", ".join(f"{name} {st['messages']}/{st['num_deleted']}" for name, st in kv.items() if st["messages"] > 10)
                    + f"; the stack used {sum(burst_cpu.values()) / burst_s:.2f} cores, other processes {others_s / burst_s:.2f}"
                    + f"; load {os.getloadavg()[0]:.1f}",
                    file=sys.stderr,
                )
                if index == 0:
                    rss_after_warmup = rss_mb(server_pid)
            result["soak"] = {
                "rounds": rounds,
                "first_per_s": rounds[0]["accepted_per_s"],
                "last_per_s": rounds[-1]["accepted_per_s"],
                "ratio": rounds[-1]["accepted_per_s"] / rounds[0]["accepted_per_s"],
                "rss_after_first_round_mb": rss_after_warmup,
                "rss_end_mb": rss_mb(server_pid),
            }
            result["soak"]["rss_growth_mb"] = result["soak"]["rss_end_mb"] - rss_after_warmup
            result["soak"].update(steadiness(rounds))
        for row in (baseline, ours):
            row.pop("task_ids", None)
        return result
    finally:
        await nc.drain()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500, help="Requests sent at once.")
    parser.add_argument("--soak", type=int, default=0, help="Then this many more, in rounds of 1,000.")
    parser.add_argument("--audit", action="store_true", help="Also run the audit writer (`taskbus audit run`) and record it.")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "submit.json")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-submit-"))
    monitor_port = free_port()
    nats_server = EmbeddedNats(tmp / "nats", monitor_port=monitor_port)
    nats_server.start()
    model_port = free_port()
    env = stack_env(nats_server.url, tmp / "data", model_port)
    responder = tmp / "responder.py"
    responder.write_text(RESPONDER)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cli", "model", "serve", "--script", "hello", "--port", str(model_port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        )
    ]
    try:
        wait_port(model_port, procs[0])
        env["BENCH_KEY"] = asyncio.run(make_key(Settings.load(env)))
        procs.append(
            subprocess.Popen([sys.executable, "-m", "cli", "--log-level", "warning", "runner", "--slots", "16"], cwd=ROOT, env=env)
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "cli", "--log-level", "warning", "serve", "--transport", "none"], cwd=ROOT, env=env
        )
        procs.append(server)
        canned = SubmitAccepted(task_id=new_task_id(), events_subject="bench.events.x")  # what the gateway answers
        base = subprocess.Popen(
            [sys.executable, str(responder), nats_server.url, "bench.baseline", encode(canned).decode()],
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(base)
        assert base.stdout is not None and base.stdout.readline().strip() == "ready"
        assert nats_server.pid is not None
        pids = {"nats": nats_server.pid, "server": server.pid, "runner": procs[1].pid, "model": procs[0].pid, "publisher": os.getpid()}
        if args.audit:  # the audit writer beside the stack: its CPU and memory as its table grows
            audit = subprocess.Popen([sys.executable, "-m", "cli", "--log-level", "warning", "audit", "run"], cwd=ROOT, env=env)
            procs.append(audit)
            pids["audit"] = audit.pid
        result = asyncio.run(measure(args, env, pids, monitor_port))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        nats_server.stop()

    b, t = result["baseline"], result["taskbus"]
    print(f"{'':<10}{'jobs':>6}{'accepted':>10}{'acc/s':>9}{'p50 ms':>9}{'p99 ms':>9}")
    for name, row in (("baseline", b), ("taskbus", t)):
        print(f"{name:<10}{row['jobs']:>6}{row['accepted']:>10}{row['accepted_per_s']:>9.0f}{row['p50_ms']:>9.1f}{row['p99_ms']:>9.1f}")
    finished = result["finished"]
    print(f"finished: {finished}  (refused: {t['refused'] or 'none'})")
    print(f"taskbus/baseline accepted/s: {t['accepted_per_s'] / b['accepted_per_s']:.2f}")
    result["targets"] = {
        "accepted_per_s": TARGET_ACCEPTED_PER_S,
        "p99_ms": TARGET_P99_MS,
        "met": t["accepted_per_s"] >= TARGET_ACCEPTED_PER_S
        and t["p99_ms"] <= TARGET_P99_MS
        and t["accepted"] == t["jobs"]
        and set(finished) == {"succeeded"},
    }
    print(
        f"target: >= {TARGET_ACCEPTED_PER_S:.0f} accepted/s, p99 <= {TARGET_P99_MS:.0f} ms, all finished: "
        f"{'met' if result['targets']['met'] else 'NOT met'}"
    )
    if "soak" in result:
        s = result["soak"]
        print(
            f"soak: first 1,000 {s['first_per_s']:.0f}/s, last 1,000 {s['last_per_s']:.0f}/s (ratio {s['ratio']:.2f}, "
            f"target >= {TARGET_SOAK_RATIO}); server RSS {s['rss_after_first_round_mb']:.1f} -> {s['rss_end_mb']:.1f} MB "
            f"(+{s['rss_growth_mb']:.1f}, target < {TARGET_RSS_GROWTH_MB:.0f})"
        )
        print(
            f"soak, steadier figures: median of the first 3 rounds {s['median_first3_per_s']:.0f}/s, of the last 3 "
            f"{s['median_last3_per_s']:.0f}/s (ratio {s['median_ratio']:.2f}); CPU s of the whole stack per 1,000 "
            f"admissions {s['cpu_s_per_1000_first3']:.1f} -> {s['cpu_s_per_1000_last3']:.1f} (ratio {s['cpu_ratio']:.2f}); "
            f"nats-server RSS {s['nats_rss_first_mb']:.1f} -> {s['nats_rss_end_mb']:.1f} MB; other processes on the machine "
            f"used {s['others_cores_first3']:.2f} cores in the first 3 bursts, {s['others_cores_last3']:.2f} in the last 3"
        )
        print(
            "soak, RSS after the first round -> after the last: "
            + ", ".join(f"{name} {s['rss_first_round_mb'][name]:.1f} -> {mb:.1f} MB" for name, mb in s["rss_last_round_mb"].items())
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "submit",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                **result,
            },
            indent=2,
            default=str,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
