"""Benchmark of the model gateway: the latency it adds to one model call.

Paths, measured round-robin in the same run (so machine noise hits all alike):

- ``direct``: httpx -> scripted model server (TCP)                     [baseline]
- ``gateway``: httpx -> gateway unix socket -> scripted model            (what the runner adds)
- ``forwarder``: httpx -> forwarder (TCP, python3 subprocess) -> gateway -> model
  (the whole in-sandbox path, minus the sandbox)
- ``complete``: AnthropicProvider.complete (streaming, metered, count_tokens first) vs
  one direct streaming request made with the same HTTP client

for a short JSON reply and a short streamed reply. The gateway makes two upstream
requests per call (count_tokens for the hard cap, then the call), which is most of what
it adds. Also: the time to start and stop one gateway (once per task).

The scripted model runs in its own process. Its listening socket is given TCP_NODELAY
here if it lacks it (without it every upstream request waits ~40 ms for a delayed
ACK); a note is printed when that was needed.

    scripts/bench gateway [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import secrets
import signal
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from bus import CompleteRequest, Policy, Settings
from sandbox._gateway import ModelGateway, Upstream, encode_body, new_placeholder_key
from sandbox._providers import AnthropicProvider

ROOT = Path(__file__).resolve().parents[1]
MODEL = "claude-sonnet-4-6"
BODY = {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": "hi"}]}
SERVER = """
import asyncio, socket, sys
from sandbox import ScriptedModelServer

async def main():
    async with ScriptedModelServer("hello", required_api_key=sys.argv[1]) as model:
        nodelay = model._socket.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        model._socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        print(model.port, nodelay, flush=True)
        await asyncio.Event().wait()
asyncio.run(main())
"""


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def start(argv: list[str], **kw) -> tuple[asyncio.subprocess.Process, str]:
    proc = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE, start_new_session=True, **kw)
    assert proc.stdout is not None
    async with asyncio.timeout(30):
        line = (await proc.stdout.readline()).decode().strip()
    return proc, line


async def stop(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(5):
                await proc.wait()
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()


async def timed_post(client: httpx.AsyncClient, url: str, body: dict, headers: dict) -> float:
    t = time.perf_counter()
    response = await client.post(url, json=body, headers=headers)
    response.read()
    if response.status_code != 200:
        raise RuntimeError(f"{url}: {response.status_code} {response.text[:200]}")
    return (time.perf_counter() - t) * 1000


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default="bench-results/gateway.json")
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    n = args.requests
    real_key = "sk-ant-bench-" + secrets.token_hex(16)
    tmp = Path(tempfile.mkdtemp(prefix="bench-gw-"))
    server, line = await start([sys.executable, "-c", SERVER, real_key], cwd=str(ROOT))
    port, nodelay = (int(x) for x in line.split())
    upstream_url = f"http://127.0.0.1:{port}"
    settings = Settings.load({}, data_dir=str(tmp), upstream_url=upstream_url, upstream_api_key=real_key)
    policy = Policy(task_id="bench", kind="task", key_id="k", profile="p", model=MODEL, models=[MODEL], tools=["*"], max_cost_usd=1e6)
    placeholder = new_placeholder_key()
    sock = tmp / "run" / "model.sock"
    results: dict[str, dict[str, list[float]]] = {}
    try:
        async with Upstream(settings) as upstream, ModelGateway(settings, policy, sock, placeholder, upstream=upstream):
            forwarder, ready = await start(
                ["python3", "-I", "-S", str(ROOT / "sandbox" / "_forwarder.py"), "--listen", "127.0.0.1:0", "--socket", str(sock)]
            )
            fport = int(ready.rsplit(":", 1)[1])
            direct = httpx.AsyncClient(base_url=upstream_url)
            via_gw = httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock)), base_url="http://gw")
            via_fw = httpx.AsyncClient(base_url=f"http://127.0.0.1:{fport}")
            real = {"x-api-key": real_key}
            ph = {"x-api-key": placeholder}
            provider = AnthropicProvider(settings, upstream=upstream)
            request = CompleteRequest(prompt="hi", max_tokens=100)
            complete_policy = Policy(task_id="c", kind="complete", key_id="k", profile="p", model=MODEL, models=[MODEL], max_cost_usd=1e6)

            stream_body = encode_body({**BODY, "stream": True})

            async def lean_direct() -> float:  # the same HTTP client the provider uses, one request
                t = time.perf_counter()
                response = await upstream.open("/v1/messages", "", stream_body, upstream.headers(()))
                await response.aread()
                await response.aclose()
                return (time.perf_counter() - t) * 1000

            async def provider_call() -> float:
                t = time.perf_counter()
                await provider.complete(request, complete_policy)
                return (time.perf_counter() - t) * 1000

            modes = {
                "json/direct": lambda: timed_post(direct, "/v1/messages", BODY, real),
                "json/gateway": lambda: timed_post(via_gw, "/v1/messages", BODY, ph),
                "json/forwarder": lambda: timed_post(via_fw, "/v1/messages", BODY, ph),
                "stream/direct": lambda: timed_post(direct, "/v1/messages", {**BODY, "stream": True}, real),
                "stream/gateway": lambda: timed_post(via_gw, "/v1/messages", {**BODY, "stream": True}, ph),
                "stream/forwarder": lambda: timed_post(via_fw, "/v1/messages", {**BODY, "stream": True}, ph),
                "complete/direct": lean_direct,
                "complete/provider": provider_call,
            }
            samples: dict[str, list[float]] = {m: [] for m in modes}
            for _ in range(10):  # warm up connections and code paths
                for fn in modes.values():
                    await fn()
            for _ in range(n):
                for mode, fn in modes.items():
                    samples[mode].append(await fn())
            for client in (direct, via_gw, via_fw):
                await client.aclose()
            await stop(forwarder)
        lifecycle = []
        async with Upstream(settings) as upstream:
            for i in range(50):
                t = time.perf_counter()
                async with ModelGateway(settings, policy, tmp / f"r{i}" / "model.sock", placeholder, upstream=upstream):
                    pass
                lifecycle.append((time.perf_counter() - t) * 1000)
    finally:
        await stop(server)
    for mode, values in samples.items():
        kind, path = mode.split("/")
        results.setdefault(kind, {})[path] = values
    rows = []
    print(f"\nmodel gateway, {n} sequential requests per path, round-robin ({platform.machine()}, {os.cpu_count()} cpus)")
    print(f"{'path':<22}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}{'x direct':>10}{'+p50 ms':>10}")
    for kind, paths in results.items():
        base = statistics.median(paths["direct"])
        for path, values in paths.items():
            p50, p99 = statistics.median(values), pct(values, 0.99)
            row = {
                "path": f"{kind}/{path}",
                "p50_ms": round(p50, 3),
                "p99_ms": round(p99, 3),
                "mean_ms": round(statistics.fmean(values), 3),
                "ratio_p50": round(p50 / base, 2),
                "added_p50_ms": round(p50 - base, 3),
            }
            rows.append(row)
            print(f"{row['path']:<22}{p50:>10.2f}{p99:>10.2f}{row['mean_ms']:>10.2f}{row['ratio_p50']:>10.2f}{row['added_p50_ms']:>10.2f}")
    life = {"p50_ms": round(statistics.median(lifecycle), 3), "p99_ms": round(pct(lifecycle, 0.99), 3)}
    print(f"{'gateway start+stop':<22}{life['p50_ms']:>10.2f}{life['p99_ms']:>10.2f}")
    print("(json/stream: an httpx client in front; complete: the provider vs one streaming request with its own client)")
    if not nodelay:
        print(
            "note: the scripted model's listening socket had no TCP_NODELAY (set here); without it each "
            "upstream request waits ~40 ms for a delayed ACK"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "benchmark": "gateway",
                "requests": n,
                "rows": rows,
                "gateway_lifecycle": life,
                "scripted_server_had_nodelay": bool(nodelay),
                "cpus": os.cpu_count(),
            },
            indent=2,
        )
    )
    print(f"wrote {out}")


if __name__ == "__main__":
    asyncio.run(main())
