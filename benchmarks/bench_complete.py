"""``complete`` over the bus (publish a job to its ``finished`` event, through a real
runner and the metering provider) against calling the scripted model directly, at 1
and 32 concurrent callers.

    scripts/bench complete [--requests 400] [--out ...]

Targets on 2 cores: added p50 <= 3 ms; >= 500 completions/s.
"""

from __future__ import annotations

import argparse
import asyncio

import httpx
from _loops import closed_loop
from bench_runner import Finisher, make_job, ms, print_table, runner, stack, write_json

import bus

BODY = {"model": "claude-sonnet-4-6", "max_tokens": 64, "messages": [{"role": "user", "content": "ping"}]}


async def main(args: argparse.Namespace) -> None:
    results: dict[str, dict[str, float]] = {}
    async with stack() as (settings, b, model):
        async with httpx.AsyncClient(base_url=model.url, headers={"x-api-key": "bench-key", "anthropic-version": "2023-06-01"}) as http:

            async def direct() -> None:
                r = await http.post("/v1/messages", json=BODY)
                r.raise_for_status()

            async with runner(settings, slots=1, kinds=("complete",)), Finisher(b) as finisher:

                async def via_bus() -> None:
                    _, finished = await finisher.run(make_job(settings, bus.CompleteRequest(prompt="ping", max_tokens=64)))
                    if finished.status != "succeeded":
                        raise SystemExit(f"completion ended {finished.status}: {finished.result}")

                for name, call in (("direct", direct), ("bus", via_bus)):
                    await closed_loop(20, 4, call)  # warm-up
                    for concurrency in (1, 32):
                        n = args.requests if concurrency > 1 else max(args.requests // 4, 50)
                        samples, wall = await closed_loop(n, concurrency, call)
                        results[f"{name}_c{concurrency}"] = {
                            "p50_ms": ms(samples, 0.5),
                            "p99_ms": ms(samples, 0.99),
                            "per_s": round(n / wall, 1),
                        }
    rows = []
    for concurrency in (1, 32):
        d, v = results[f"direct_c{concurrency}"], results[f"bus_c{concurrency}"]
        added = round(v["p50_ms"] - d["p50_ms"], 2)
        results[f"added_c{concurrency}"] = {"added_p50_ms": added, "ratio_per_s": round(v["per_s"] / d["per_s"], 3)}
        rows.append([concurrency, "direct (baseline)", d["p50_ms"], d["p99_ms"], d["per_s"], ""])
        rows.append(
            [
                concurrency,
                "bus + runner",
                v["p50_ms"],
                v["p99_ms"],
                v["per_s"],
                f"+{added} ms p50, {results[f'added_c{concurrency}']['ratio_per_s']}x throughput",
            ]
        )
    print_table("complete: bus path vs direct model call", ["clients", "path", "p50 ms", "p99 ms", "calls/s", "vs baseline"], rows)
    results["targets"] = {"added_p50_ms": 3.0, "per_s": 500.0}
    write_json(args.out, {"benchmark": "complete", "results": results})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--out", default="bench-results/complete.json")
    asyncio.run(main(parser.parse_args()))
