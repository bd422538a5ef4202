"""``run_task`` overhead: a ``hello`` job from publish to its ``finished`` event, against
running the same ``claude -p`` directly on the host against the same scripted model.

    scripts/bench task [--runs 20] [--backends bwrap,docker,docker-warm,bwrap-agent,docker-agent] [--out ...]

Targets on 2 cores (p50 overhead over direct): bwrap <= 60 ms, Docker warm pool
<= 100 ms, Docker cold <= 500 ms. Warm agents (``*-agent``: a sandbox with Claude Code
already started, issue 18): p50 <= 0.5x and p99 <= 0.8x the direct ``claude -p``. Before
each warm-agent run the bench waits until the runner holds a warm agent again (the
refill is off the measured path, as it is off a job's); ``--demo`` adds the multi-turn
``demo`` script, direct and on warm agents.
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
from sandbox import Runner, find_claude

TARGETS_MS = {"bwrap": 60.0, "docker-warm": 100.0, "docker": 500.0}
TARGET_RATIOS = {"p50": 0.5, "p99": 0.8}
"""Warm agents: run_task / direct claude -p."""
PROMPT = "[script:hello] say hello"
DEMO_PROMPT = "[script:demo] Write primes.py that prints the primes below 50, run it, and summarize."
TOOLS = ["Bash", "Read", "Write"]


async def direct(settings: bus.Settings, model_url: str, runs: int, prompt: str = PROMPT) -> list[float]:
    claude = str(find_claude(settings))
    samples = []
    for _ in range(runs):
        home = tempfile.mkdtemp(prefix="tb-bench-home-")
        env = {
            "PATH": os.environ["PATH"],
            "HOME": home,
            "ANTHROPIC_BASE_URL": model_url,
            "ANTHROPIC_API_KEY": "bench-key",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        }
        started = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(
            claude,
            "-p",
            "--output-format=stream-json",
            "--verbose",
            "--model=claude-sonnet-4-6",
            "--tools=" + ",".join(TOOLS),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=home,
            env=env,
        )
        await proc.communicate(prompt.encode())
        samples.append(time.perf_counter() - started)
        shutil.rmtree(home, ignore_errors=True)
    return samples


async def through_bus(settings: bus.Settings, b: bus.Bus, backend: str, runs: int, prompt: str = PROMPT) -> list[float]:
    name = backend.split("-")[0]
    agents = backend.endswith("-agent")
    if backend == "docker-warm":
        settings = msgspec.structs.replace(settings, docker_warm_pool=2)
    if agents:
        settings = msgspec.structs.replace(settings, warm_agents_per_class=1, warm_agents_total=1)
    samples = []
    async with runner(settings, backend=name, slots=1, kinds=("task",)) as run, Finisher(b) as finisher:
        # one warm-up run (first JetStream consumer fetch, first sandbox of a pool; for
        # warm agents the cold task that tells the runner which class to keep warm)
        await finisher.run(make_job(settings, bus.TaskRequest(description=prompt), tools=TOOLS))
        for _ in range(runs):
            if agents:
                await _wait_warm_agent(run)
            elapsed, finished = await finisher.run(make_job(settings, bus.TaskRequest(description=prompt), tools=TOOLS))
            if finished.status != "succeeded":
                raise SystemExit(f"{backend}: task ended {finished.status}: {finished.result}")
            samples.append(elapsed)
        if agents and run.warm is not None and run.warm.taken < runs:
            raise SystemExit(f"{backend}: only {run.warm.taken} of {runs} runs got a warm agent")
    return samples


async def _wait_warm_agent(run: Runner, *, timeout: float = 120.0) -> None:
    assert run.warm is not None
    async with asyncio.timeout(timeout):
        while not run.warm.idle_total():  # noqa: ASYNC110 (the pool exposes no event for "an agent is idle"; a benchmark setup step)
            await asyncio.sleep(0.02)


async def main(args: argparse.Namespace) -> None:
    results: dict[str, dict[str, object]] = {}
    backends = args.backends.split(",")
    async with stack() as (settings, b, model):
        base = await direct(settings, model.url, args.runs)
        results["direct"] = _stats(base)
        for backend in backends:
            results[backend] = _compare(await through_bus(settings, b, backend, args.runs), base, backend)
        if args.demo:
            demo_base = await direct(settings, model.url, args.runs, DEMO_PROMPT)
            results["demo direct"] = _stats(demo_base)
            for backend in [x for x in backends if x.endswith("-agent")]:
                results[f"demo {backend}"] = _compare(await through_bus(settings, b, backend, args.runs, DEMO_PROMPT), demo_base, backend)
    rows = []
    for path, r in results.items():
        label = f"{path} claude -p (baseline)" if path.endswith("direct") else f"run_task via bus ({path})"
        rows.append(
            [
                label,
                r["p50_ms"],
                r["p99_ms"],
                r.get("overhead_p50_ms", ""),
                r.get("ratio_p50", ""),
                r.get("ratio_p99", ""),
                r.get("target", ""),
            ]
        )
    print_table(
        f"run_task against direct claude -p, {args.runs} runs each",
        ["path", "p50 ms", "p99 ms", "overhead p50 ms", "ratio p50", "ratio p99", "target"],
        rows,
    )
    write_json(args.out, {"benchmark": "task", "runs": args.runs, "results": results})


def _stats(samples: list[float]) -> dict[str, object]:
    return {"p50_ms": ms(samples, 0.5), "p95_ms": ms(samples, 0.95), "p99_ms": ms(samples, 0.99)}


def _compare(samples: list[float], base: list[float], backend: str) -> dict[str, object]:
    r = _stats(samples)
    p50, p99 = r["p50_ms"], r["p99_ms"]
    assert isinstance(p50, float) and isinstance(p99, float)
    ratio50, ratio99 = round(p50 / ms(base, 0.5), 3), round(p99 / ms(base, 0.99), 3)
    r |= {"overhead_p50_ms": round(p50 - ms(base, 0.5), 2), "ratio_p50": ratio50, "ratio_p99": ratio99}
    if backend.endswith("-agent"):
        met = ratio50 <= TARGET_RATIOS["p50"] and ratio99 <= TARGET_RATIOS["p99"]
        r |= {"meets_target": met, "target": f"p50 <= 0.5x, p99 <= 0.8x: {'yes' if met else 'NO'}"}
    else:
        met = p50 - ms(base, 0.5) <= TARGETS_MS[backend]
        r |= {
            "target_overhead_ms": TARGETS_MS[backend],
            "meets_target": met,
            "target": f"<= {TARGETS_MS[backend]} ms: {'yes' if met else 'NO'}",
        }
    return r


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--backends", default="bwrap,docker-warm,docker,bwrap-agent,docker-agent")
    parser.add_argument("--demo", action="store_true", help="also the multi-turn demo script, direct and on warm agents")
    parser.add_argument("--out", default="bench-results/task.json")
    asyncio.run(main(parser.parse_args()))
