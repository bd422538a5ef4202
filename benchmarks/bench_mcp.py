"""Benchmark of the MCP ``complete`` tool: calls/s and p50/p99 latency over Streamable HTTP
(1 and 16 concurrent clients) and over stdio, against the scripted model.

Baseline measured in the same run: the same MCP SDK serving an ``echo`` tool, on the
same transport, with the same client code. The difference is what taskbus adds per
call: bearer auth, rate limit, routing, policy, budget reserve/settle, the task
registry, the bus round trip (accepted + job publish, runner, events back) and the
model call to the scripted model.

Processes: nats-server (embedded), the scripted model (``taskbus model serve``), one
runner (``taskbus runner``), the server (``taskbus serve``), the echo server; the
clients run in this process.

A breakdown follows (``--breakdown N`` sequential calls, 1 client): where one call's
time goes, from the client's clock and the event timestamps of the same machine
(server: ``accepted``; runner: ``model_call``, ``finished``) and the server's admission
histogram (``/metrics``): client -> admitted (HTTP, MCP SDK in, auth, admission),
``accepted`` published -> runner's ``model_call`` (accepted and job publish, runner
pick-up, the model call), -> ``finished`` published, -> the client has the result
(delivery to the server, settlement, MCP SDK out, HTTP).

    scripts/bench mcp [--calls 200] [--breakdown 100] [--out bench-results/mcp.json]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import httpx2
from mcp import Client, StdioServerParameters
from mcp.client.streamable_http import streamable_http_client

from bus import Bus, EmbeddedNats, Finished, ModelCall, Settings
from profiles import Store
from server._dispatch_events import replay_events

ROOT = Path(__file__).resolve().parents[1]
TARGET_ADDED_P50_MS = 3.0

ECHO_SERVER = textwrap.dedent(
    """
    import sys
    from mcp.server import MCPServer
    mcp = MCPServer("echo")
    @mcp.tool()
    async def echo(prompt: str) -> str:
        return prompt
    if sys.argv[1] == "stdio":
        mcp.run()
    else:
        import uvicorn
        uvicorn.run(mcp.streamable_http_app(), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning",
                    access_log=False)
    """
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_port(port: int, proc: subprocess.Popen, deadline_s: float = 60.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{proc.args} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listening on {port} after {deadline_s}s")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


async def drive(make_client, tool: str, args: dict, *, clients: int, calls: int, warmup: int = 10) -> dict:
    """``clients`` sessions, each making ``calls // clients`` sequential calls after a warm-up."""
    latencies: list[float] = []
    errors = 0

    async def one(index: int) -> None:
        nonlocal errors
        async with make_client() as client:
            for _ in range(warmup):
                await client.call_tool(tool, args)
            await barrier.wait()
            for _ in range(calls // clients):
                start = time.perf_counter()
                result = await client.call_tool(tool, args)
                latencies.append((time.perf_counter() - start) * 1000)
                if result.is_error:
                    errors += 1
                    if errors == 1:
                        print(f"  error from {tool}: {result.content[0].text[:300]}", file=sys.stderr)

    barrier = asyncio.Barrier(clients + 1)
    tasks = [asyncio.create_task(one(i)) for i in range(clients)]
    await barrier.wait()
    started = time.perf_counter()
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - started
    return {
        "clients": clients,
        "calls": len(latencies),
        "errors": errors,
        "calls_per_s": len(latencies) / wall,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 99),
    }


async def measure(args: argparse.Namespace, env: dict[str, str], key: str, tmp: Path) -> list[dict]:
    rows: list[dict] = []
    echo_script = tmp / "echo_server.py"
    echo_script.write_text(ECHO_SERVER)
    serve_port, echo_port = free_port(), free_port()
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cli", "--log-level", "warning", "serve", "--transport", "http", "--port", str(serve_port)],
            cwd=ROOT,
            env=env,
        ),
        subprocess.Popen([sys.executable, str(echo_script), "http", str(echo_port)], cwd=ROOT, env=env),
    ]
    try:
        wait_port(serve_port, procs[0])
        wait_port(echo_port, procs[1])
        tb_args = {"prompt": "[script:hello] benchmark", "model": "claude-haiku-4-5"}
        echo_args = {"prompt": "[script:hello] benchmark"}

        def taskbus_http():
            return _http_client(f"http://127.0.0.1:{serve_port}/mcp", {"Authorization": f"Bearer {key}"})

        def echo_http():
            return _http_client(f"http://127.0.0.1:{echo_port}/mcp", {})

        def _http_client(url: str, headers: dict):
            @contextlib.asynccontextmanager
            async def cm():
                async with httpx2.AsyncClient(headers=headers, timeout=60) as http:
                    async with Client(streamable_http_client(url, http_client=http)) as client:
                        yield client

            return cm()

        for clients in (1, 16):
            calls = args.calls if clients == 1 else args.calls * 2
            base = await drive(echo_http, "echo", echo_args, clients=clients, calls=calls)
            ours = await drive(taskbus_http, "complete", tb_args, clients=clients, calls=calls)
            rows.append({"transport": "http", "baseline": base, "taskbus": ours})
            print(f"  http x{clients}: done", file=sys.stderr)

        stdio_env = {**env, "TASKBUS_API_KEY": key, "TASKBUS_LOG_LEVEL": "warning"}

        def taskbus_stdio():
            return Client(
                StdioServerParameters(
                    command=sys.executable, args=["-m", "cli", "serve", "--transport", "stdio"], cwd=str(ROOT), env=stdio_env
                )
            )

        def echo_stdio():
            return Client(StdioServerParameters(command=sys.executable, args=[str(echo_script), "stdio"], cwd=str(ROOT), env=stdio_env))

        if args.breakdown:
            rows.append(await breakdown(taskbus_http, tb_args, env, f"http://127.0.0.1:{serve_port}/metrics", calls=args.breakdown))
            print("  breakdown: done", file=sys.stderr)
        base = await drive(echo_stdio, "echo", echo_args, clients=1, calls=args.calls)
        ours = await drive(taskbus_stdio, "complete", tb_args, clients=1, calls=args.calls)
        rows.append({"transport": "stdio", "baseline": base, "taskbus": ours})
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
    return rows


async def admission_ms(url: str) -> tuple[float, float]:
    """(sum in ms, count) of the server's admission histogram for ``complete``."""
    total = count = 0.0
    async with httpx2.AsyncClient(timeout=10) as http:
        text = (await http.get(url)).text
    for line in text.splitlines():
        if line.startswith('taskbus_admission_duration_seconds_sum{kind="complete"}'):
            total = float(line.split()[-1]) * 1000
        elif line.startswith('taskbus_admission_duration_seconds_count{kind="complete"}'):
            count = float(line.split()[-1])
    return total, count


async def breakdown(make_client, tool_args: dict, env: dict[str, str], metrics_url: str, *, calls: int) -> dict:
    """Sequential calls, each cut into segments by the clocks of one machine."""
    stamps: list[tuple[float, float, str]] = []
    sum0, count0 = await admission_ms(metrics_url)
    async with make_client() as client:
        for _ in range(10):
            await client.call_tool("complete", tool_args)
        sum0, count0 = await admission_ms(metrics_url)
        for _ in range(calls):
            t0 = time.time()
            result = await client.call_tool("complete", tool_args)
            t1 = time.time()
            stamps.append((t0, t1, (result.structured_content or {}).get("task_id", "")))
    sum1, count1 = await admission_ms(metrics_url)
    segments: dict[str, list[float]] = {
        k: [] for k in ("to_accepted", "accepted_to_model_call", "model_call_to_finished", "finished_to_client", "total")
    }
    async with await Bus.for_settings(Settings.load(env), name="bench-breakdown") as bus:
        for t0, t1, task_id in stamps:
            events = await replay_events(bus, task_id)
            accepted = events[0].ts.timestamp()
            model = next((e.ts.timestamp() for e in events if isinstance(e, ModelCall)), None)
            finished = next((e.ts.timestamp() for e in events if isinstance(e, Finished)), None)
            if model is None or finished is None:
                continue
            segments["to_accepted"].append((accepted - t0) * 1000)
            segments["accepted_to_model_call"].append((model - accepted) * 1000)
            segments["model_call_to_finished"].append((finished - model) * 1000)
            segments["finished_to_client"].append((t1 - finished) * 1000)
            segments["total"].append((t1 - t0) * 1000)
    p50 = {k: statistics.median(v) for k, v in segments.items() if v}
    p50["admission_mean"] = (sum1 - sum0) / max(1.0, count1 - count0)
    return {"transport": "breakdown", "calls": len(segments["total"]), "p50_ms": p50}


async def make_key(env: dict[str, str]) -> str:
    settings = Settings.load(env)
    async with Store.for_settings(settings) as store:
        await store.apply_toml(
            textwrap.dedent(
                """
            [profiles.bench]
            kinds = ["complete"]
            models = ["claude-haiku-4-5", "claude-sonnet-4-6"]
            max_concurrent = 64
            max_cost_per_task_usd = 0.05
            rate_limit_per_min = 1000000
            """
            )
        )
        return (await store.create_key("bench"))[0]


def stack_env(nats_url: str, data: Path, model_port: int) -> dict[str, str]:
    """The environment of a benchmark stack's processes: this one's without TASKBUS_*, plus
    the bench NATS, data dir, scripted model and subject prefix."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBUS_")}
    env.update(
        {
            "TASKBUS_NATS_URL": nats_url,
            "TASKBUS_DATA_DIR": str(data),
            "TASKBUS_UPSTREAM_URL": f"http://127.0.0.1:{model_port}",
            "TASKBUS_SUBJECT_PREFIX": "bench",
            "TASKBUS_LOG_LEVEL": "warning",
        }
    )
    return env


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200, help="Measured calls at 1 client (x2 at 16 clients).")
    parser.add_argument("--breakdown", type=int, default=100, help="Sequential calls cut into segments (0: none).")
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "mcp.json")
    args = parser.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="bench-mcp-"))
    nats = EmbeddedNats(tmp / "nats")
    nats.start()
    model_port = free_port()
    env = stack_env(nats.url, tmp / "data", model_port)
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cli", "model", "serve", "--script", "hello", "--port", str(model_port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
        ),
    ]
    try:
        wait_port(model_port, procs[0])
        key = asyncio.run(make_key(env))
        procs.append(
            subprocess.Popen([sys.executable, "-m", "cli", "--log-level", "warning", "runner", "--slots", "16"], cwd=ROOT, env=env)
        )
        rows = asyncio.run(measure(args, env, key, tmp))
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
        nats.stop()

    header = (
        f"{'transport':<10}{'clients':>8}{'echo c/s':>10}{'echo p50':>10}{'echo p99':>10}"
        f"{'tb c/s':>9}{'tb p50':>9}{'tb p99':>9}{'added p50':>11}{'p50 ratio':>10}"
    )
    print(header)
    for row in [r for r in rows if r["transport"] != "breakdown"]:
        b, t = row["baseline"], row["taskbus"]
        row["added_p50_ms"] = t["p50_ms"] - b["p50_ms"]
        row["p50_ratio"] = t["p50_ms"] / b["p50_ms"]
        row["target_met"] = row["added_p50_ms"] <= TARGET_ADDED_P50_MS
        print(
            f"{row['transport']:<10}{t['clients']:>8}{b['calls_per_s']:>10.0f}{b['p50_ms']:>10.2f}{b['p99_ms']:>10.2f}"
            f"{t['calls_per_s']:>9.0f}{t['p50_ms']:>9.2f}{t['p99_ms']:>9.2f}{row['added_p50_ms']:>11.2f}"
            f"{row['p50_ratio']:>10.2f}"
        )
    print(f"target: added p50 <= {TARGET_ADDED_P50_MS} ms over the echo baseline")
    for row in [r for r in rows if r["transport"] == "breakdown"]:
        print(f"breakdown of one call over HTTP (p50 of {row['calls']} sequential calls; segments by timestamps):")
        labels = {
            "to_accepted": "client -> accepted published (HTTP, MCP in, auth, admission)",
            "admission_mean": "  of which admission in the dispatcher (mean, /metrics)",
            "accepted_to_model_call": "accepted -> model_call (publishes, runner pick-up, model)",
            "model_call_to_finished": "model_call -> finished published (runner)",
            "finished_to_client": "finished -> client has the result (delivery, settle, MCP out)",
            "total": "total (client)",
        }
        for key, label in labels.items():
            if key in row["p50_ms"]:
                print(f"  {label:<66}{row['p50_ms'][key]:>8.2f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "mcp",
                "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
                "target_added_p50_ms": TARGET_ADDED_P50_MS,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
