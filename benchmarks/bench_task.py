"""``run_task`` overhead: a ``hello`` job from publish to its ``finished`` event, against
running the same ``claude -p`` directly on the host against the same scripted model.

    scripts/bench task [--runs 20] [--backends bwrap,docker,docker-warm] [--out ...]

Targets on 2 cores (p50 overhead over direct): bwrap <= 60 ms, Docker warm pool
<= 100 ms, Docker cold <= 500 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import tempfile
import time

import msgspec
from bench_runner import Finisher, make_job, ms, print_table, runner, stack, write_json

import bus
from sandbox import find_claude

TARGETS_MS = {"bwrap": 60.0, "docker-warm": 100.0, "docker": 500.0}
PROMPT = "[script:hello] say hello"


async def direct(settings: bus.Settings, model_url: str, runs: int) -> list[float]:
    claude = str(find_claude(settings))
    samples = []
    for _ in range(runs):
        home = tempfile.mkdtemp(prefix="tb-bench-home-")
        env = {"PATH": os.environ["PATH"], "HOME": home, "ANTHROPIC_BASE_URL": model_url,
               "ANTHROPIC_API_KEY": "bench-key", "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1"}
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            claude, "-p", "--output-format=stream-json", "--verbose", "--model=claude-sonnet-4-6",
            "--tools=Bash,Read,Write", stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL, cwd=home, env=env,
        )
        await proc.communicate(PROMPT.encode())
        samples.append(time.perf_counter() - started)
        shutil.rmtree(home, ignore_errors=True)
    return samples


async def through_bus(settings: bus.Settings, b: bus.Bus, backend: str, runs: int) -> list[float]:
    name = "docker" if backend.startswith("docker") else backend
    if backend == "docker-warm":
        settings = msgspec.structs.replace(settings, docker_warm_pool=2)
    samples = []
    async with runner(settings, backend=name, slots=1, kinds=("task",)), Finisher(b) as finisher:
        # one warm-up run (first JetStream consumer fetch, first sandbox of a pool)
        await finisher.run(make_job(settings, bus.TaskRequest(description=PROMPT)))
        for _ in range(runs):
            elapsed, finished = await finisher.run(make_job(settings, bus.TaskRequest(description=PROMPT)))
            if finished.status != "succeeded":
                raise SystemExit(f"{backend}: task ended {finished.status}: {finished.result}")
            samples.append(elapsed)
    return samples


async def main(args: argparse.Namespace) -> None:
    results = {}
    async with stack() as (settings, b, model):
        base = await direct(settings, model.url, args.runs)
        results["direct"] = {"p50_ms": ms(base, 0.5), "p95_ms": ms(base, 0.95)}
        for backend in args.backends.split(","):
            samples = await through_bus(settings, b, backend, args.runs)
            p50, p95 = ms(samples, 0.5), ms(samples, 0.95)
            overhead = round(p50 - results["direct"]["p50_ms"], 2)
            results[backend] = {"p50_ms": p50, "p95_ms": p95, "overhead_p50_ms": overhead,
                                "ratio_p50": round(p50 / results["direct"]["p50_ms"], 3),
                                "target_overhead_ms": TARGETS_MS[backend], "meets_target": overhead <= TARGETS_MS[backend]}
    rows = [["direct claude -p (baseline)", results["direct"]["p50_ms"], results["direct"]["p95_ms"], "", "", ""]]
    for backend in args.backends.split(","):
        r = results[backend]
        rows.append([f"run_task via bus ({backend})", r["p50_ms"], r["p95_ms"], r["overhead_p50_ms"], r["ratio_p50"],
                     f"<= {r['target_overhead_ms']} ms: {'yes' if r['meets_target'] else 'NO'}"])
    print_table(f"run_task overhead, {args.runs} runs each", ["path", "p50 ms", "p95 ms", "overhead p50 ms", "ratio", "target"], rows)
    write_json(args.out, {"benchmark": "task", "runs": args.runs, "results": results})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--backends", default="bwrap,docker-warm,docker")
    parser.add_argument("--out", default="bench-results/task.json")
    asyncio.run(main(parser.parse_args()))
