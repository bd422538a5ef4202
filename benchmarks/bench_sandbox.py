"""Sandbox start latency: create + exec `true` + destroy, per backend, against a bare
subprocess measured in the same run.

    scripts/bench sandbox [--runs 50] [--out bench-results/sandbox.json]

Targets (2 cores): bwrap p50 <= bare p50 + 15 ms; docker cold p50 <= 450 ms; docker
warm pool p50 <= 60 ms (the pool is refilled between runs, outside the timing).
``bare_python`` (starting the interpreter the exec agent runs on) is shown as context:
it is the floor of a sandbox's start and tells how loaded the machine was.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
import time
from pathlib import Path

import msgspec
from rich.console import Console
from rich.table import Table

from bus import Settings
from sandbox import SandboxSpec, build_image, get_backend

ROOT = Path(__file__).resolve().parents[1]

PYTHON = "/usr/bin/python3" if Path("/usr/bin/python3").exists() else sys.executable
TARGETS = {"bwrap_overhead_ms": 15.0, "docker_cold_ms": 450.0, "docker_warm_ms": 60.0}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summary(samples: dict[str, list[float]]) -> dict[str, float]:
    out = {}
    for phase, values in samples.items():
        out[f"{phase}_p50_ms"] = round(pct(values, 0.5) * 1000, 2)
        out[f"{phase}_p95_ms"] = round(pct(values, 0.95) * 1000, 2)
    return out


async def bare(runs: int, argv: tuple[str, ...] = ("true",)) -> dict[str, list[float]]:
    total = []
    for _ in range(runs):
        t = time.perf_counter()
        proc = await asyncio.create_subprocess_exec(*argv)
        await proc.wait()
        total.append(time.perf_counter() - t)
    return {"total": total}


async def sandboxed(backend_name: str, settings: Settings, runs: int, *, warm: bool = False) -> dict[str, list[float]]:
    backend = get_backend(backend_name, settings)
    phases: dict[str, list[float]] = {"total": [], "create": [], "exec": [], "destroy": []}
    with tempfile.TemporaryDirectory() as tmp:
        try:
            for i in range(runs):
                ws = Path(tmp) / f"ws{i}"
                ws.mkdir()
                spec = SandboxSpec(
                    task_id=f"bench-{i}", runner_id="bench", workspace=str(ws), memory_mb=512, pids=128, disk_mb=64, timeout_s=60
                )
                if warm:
                    await backend.prewarm(spec, timeout=120)  # type: ignore[attr-defined]  # docker only, not on the SandboxBackend protocol
                t0 = time.perf_counter()
                sb = await backend.create(spec)
                t1 = time.perf_counter()
                code = await (await sb.exec(["true"])).wait(timeout=60)
                t2 = time.perf_counter()
                await sb.destroy()
                t3 = time.perf_counter()
                if code != 0:
                    raise SystemExit(f"{backend_name}: `true` exited {code}")
                phases["create"].append(t1 - t0)
                phases["exec"].append(t2 - t1)
                phases["destroy"].append(t3 - t2)
                phases["total"].append(t3 - t0)
        finally:
            await backend.close()
    return phases


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", default="bench-results/sandbox.json")
    parser.add_argument("--skip-docker", action="store_true")
    args = parser.parse_args()

    settings = Settings.load({})
    with tempfile.TemporaryDirectory() as data:
        base = Settings.load({}, data_dir=data)
        info = await asyncio.to_thread(build_image, settings)
        (Path(data) / "images").symlink_to(Path(info.folder).parent)
        results: dict[str, dict[str, float]] = {}
        warmup = max(3, args.runs // 10)
        results["bare"] = summary(await bare(args.runs + warmup))
        # Context, not a target: a sandbox's first process is a Python interpreter (the exec agent).
        results["bare_python"] = summary(await bare(args.runs, (PYTHON, "-I", "-S", "-c", "import _socket, select")))
        await sandboxed("bwrap", base, warmup)
        results["bwrap"] = summary(await sandboxed("bwrap", base, args.runs))
        if not args.skip_docker:
            await sandboxed("docker", base, 2)
            results["docker_cold"] = summary(await sandboxed("docker", base, args.runs))
            warm_settings = msgspec.structs.replace(base, docker_warm_pool=1)
            results["docker_warm"] = summary(await sandboxed("docker", warm_settings, args.runs, warm=True))

    bare_p50 = results["bare"]["total_p50_ms"]
    checks = {
        "bwrap_overhead_ms": round(results["bwrap"]["total_p50_ms"] - bare_p50, 2),
        "bwrap_ratio_to_bare": round(results["bwrap"]["total_p50_ms"] / bare_p50, 1),
    }
    if "docker_cold" in results:
        checks["docker_cold_ms"] = results["docker_cold"]["total_p50_ms"]
        checks["docker_warm_ms"] = results["docker_warm"]["total_p50_ms"]
        checks["docker_cold_ratio_to_bwrap"] = round(checks["docker_cold_ms"] / results["bwrap"]["total_p50_ms"], 1)
        checks["docker_warm_ratio_to_bwrap"] = round(checks["docker_warm_ms"] / results["bwrap"]["total_p50_ms"], 1)
    met = {k: checks[k] <= v for k, v in TARGETS.items() if k in checks}

    table = Table(title=f"sandbox start: create + exec true + destroy ({args.runs} runs)")
    for column in ("variant", "p50 ms", "p95 ms", "create p50", "exec p50", "destroy p50"):
        table.add_column(column, justify="right" if column != "variant" else "left")
    for name, r in results.items():
        table.add_row(
            name,
            f"{r['total_p50_ms']:.1f}",
            f"{r['total_p95_ms']:.1f}",
            *(f"{r.get(f'{p}_p50_ms', 0):.1f}" if f"{p}_p50_ms" in r else "-" for p in ("create", "exec", "destroy")),
        )
    console = Console()
    console.print(table)
    for key, target in TARGETS.items():
        if key in checks:
            console.print(f"{key}: {checks[key]} (target <= {target}) {'met' if met[key] else 'MISSED'}")
    document = {"runs": args.runs, "results": results, "checks": checks, "targets": TARGETS, "met": met}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(document, indent=2) + "\n")
    console.print(f"wrote {args.out}")


if __name__ == "__main__":
    asyncio.run(main())
