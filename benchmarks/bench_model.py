"""Benchmark of the scripted model server: requests/s and p50/p99 latency of a short reply.

Measured against a baseline in the same run: a bare ASGI app on the same uvicorn
(uvloop + httptools, one process) that reads the POST body and answers a fixed JSON.
The ratio says what the scripted model's own work (decode, match, build, encode) costs.

Load generator: ``wrk`` (C, epoll; installed from Debian if missing). When it cannot
be installed, a Python asyncio raw-socket client is used instead and the table says so
(that client, not the server, is then likely the limit at 32 connections).

    scripts/bench model [--duration 5] [--client wrk|python]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_RPS = 2000
BODY = {
    "model": "claude-sonnet-4-6",
    "max_tokens": 100,
    "messages": [{"role": "user", "content": "[script:hello] hi"}],
}
STREAM_BODY = dict(BODY, stream=True)

BASELINE_APP = textwrap.dedent(
    """
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        more = True
        while more:
            more = (await receive()).get("more_body", False)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": b'{"ok":true}'})
    uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
                access_log=False, log_level="warning", lifespan="off")
    """
)

WRK_LUA = """
wrk.method = "POST"
wrk.body = [[%s]]
wrk.headers["content-type"] = "application/json"
wrk.headers["anthropic-version"] = "2023-06-01"
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('RESULT {"requests":%%d,"duration_us":%%d,"errors":%%d,"non2xx":%%d,"p50_us":%%d,"p99_us":%%d}\\n',
    summary.requests, summary.duration, e.connect + e.read + e.write + e.timeout, e.status,
    latency:percentile(50), latency:percentile(99)))
end
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_ready(port: int, deadline_s: float = 20.0) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"server on port {port} did not start within {deadline_s}s")


class Server:
    def __init__(self, name: str, argv: list[str]) -> None:
        self.name, self.argv = name, argv
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        argv = [a.replace("{port}", str(self.port)) for a in self.argv]
        self.process = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
        wait_ready(self.port)
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)


def ensure_wrk() -> str | None:
    found = shutil.which("wrk")
    if found:
        return found
    print("bench_model: `wrk` not found; installing it with `apt-get install -y wrk` (Debian)...", file=sys.stderr)
    try:
        subprocess.run(
            ["apt-get", "install", "-y", "-q", "wrk"],
            check=True,
            stdout=subprocess.DEVNULL,
            env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"),
            timeout=300,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        print(f"bench_model: could not install wrk ({exc}); using the Python client", file=sys.stderr)
        return None
    return shutil.which("wrk")


def run_wrk(wrk: str, url: str, body: dict, clients: int, duration: int) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(WRK_LUA % json.dumps(body))
    try:
        argv = [wrk, "-t1", f"-c{clients}", f"-d{duration}s", "--timeout", "10s", "-s", script.name, url]
        output = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60, check=True).stdout
    finally:
        os.unlink(script.name)
    line = next(row for row in output.splitlines() if row.startswith("RESULT "))
    raw = json.loads(line[len("RESULT ") :])
    return {
        "requests": raw["requests"],
        "rps": raw["requests"] / (raw["duration_us"] / 1e6),
        "p50_ms": raw["p50_us"] / 1000,
        "p99_ms": raw["p99_us"] / 1000,
        "errors": raw["errors"] + raw["non2xx"],
    }


async def _python_client(port: int, path: str, body: dict, clients: int, duration: int) -> dict:
    payload = json.dumps(body).encode()
    request = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
    ).encode() + payload
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + duration

    async def worker() -> None:
        nonlocal errors
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                length = chunked = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":")[1])
                    if line.lower().startswith(b"transfer-encoding:") and b"chunked" in line.lower():
                        chunked = 1
                if chunked:
                    await reader.readuntil(b"0\r\n\r\n")
                else:
                    await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors += 1
                latencies.append(time.perf_counter() - started)
        finally:
            writer.close()

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(clients)))
    elapsed = time.perf_counter() - began
    latencies.sort()

    def pick(q: float) -> float:
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000

    return {"requests": len(latencies), "rps": len(latencies) / elapsed, "p50_ms": pick(0.5), "p99_ms": pick(0.99), "errors": errors}


def measure(client: str, wrk: str | None, port: int, path: str, body: dict, clients: int, duration: int) -> dict:
    if client == "wrk" and wrk:
        return run_wrk(wrk, f"http://127.0.0.1:{port}{path}", body, clients, duration)
    return asyncio.run(_python_client(port, path, body, clients, duration))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=ROOT / "bench-results" / "model.json")
    parser.add_argument("--duration", type=int, default=5, help="seconds per measurement")
    parser.add_argument("--client", choices=["wrk", "python"], default="wrk")
    args = parser.parse_args()

    wrk = ensure_wrk() if args.client == "wrk" else None
    client = "wrk" if wrk else "python"
    python = sys.executable
    baseline = Server("baseline", [python, "-c", BASELINE_APP, "{port}"])
    scripted = Server("scripted", [python, "-c", "from cli import main; main()", "model", "serve", "--port", "{port}"])
    cases = [
        ("baseline: bare ASGI hello", baseline, "/v1/messages", BODY),
        ("scripted: /v1/messages JSON", scripted, "/v1/messages?beta=true", BODY),
        ("scripted: /v1/messages SSE", scripted, "/v1/messages?beta=true", STREAM_BODY),
        ("scripted: count_tokens", scripted, "/v1/messages/count_tokens", BODY),
    ]
    rows = []
    for label, server, path, body in cases:
        with server:
            measure(client, wrk, server.port, path, body, 8, 1)  # warm-up
            for clients in (1, 32):
                result = measure(client, wrk, server.port, path, body, clients, args.duration)
                rows.append({"case": label, "clients": clients, **result})

    base = {r["clients"]: r["rps"] for r in rows if r["case"].startswith("baseline")}
    for row in rows:
        row["ratio_to_baseline"] = row["rps"] / base[row["clients"]]
    print(
        f"\nscripted model server, one uvicorn process (uvloop + httptools); client: {client}; "
        f"{args.duration}s per row; {os.cpu_count()} CPUs\n"
    )
    print(f"{'case':32} {'clients':>7} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'x base':>7} {'errors':>6}")
    for r in rows:
        print(
            f"{r['case']:32} {r['clients']:>7} {r['rps']:>9.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['ratio_to_baseline']:>7.2f} {r['errors']:>6}"
        )
    short32 = next(r for r in rows if r["case"] == "scripted: /v1/messages JSON" and r["clients"] == 32)
    verdict = "meets" if short32["rps"] >= TARGET_RPS else "MISSES"
    print(f"\nshort JSON reply at 32 clients: {short32['rps']:.0f} req/s ({verdict} the {TARGET_RPS} req/s target)")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "benchmark": "model",
                "client": client,
                "duration_s": args.duration,
                "cpus": os.cpu_count(),
                "python": platform.python_version(),
                "target_rps": TARGET_RPS,
                "meets_target": short32["rps"] >= TARGET_RPS,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
