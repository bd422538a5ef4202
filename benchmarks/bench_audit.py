"""Audit ingest benchmark: events/s stored with the hash chain, against plain executemany.

Stages (each on a fresh SQLite file, same schema):
  baseline        pre-built row tuples -> executemany into audit + FTS, one transaction per
                  batch, no decode, no redaction, no chain (the floor SQLite sets)
  baseline_nofts  the same without the FTS inserts (what full-text search costs)
  writer          raw payloads -> Writer.write_batch (decode, redaction check, task->key,
                  hash chain, audit + FTS inserts, meta), batches of --batch
  writer_python   the writer without its SQLite part
  writer_no_chain the writer with hashing replaced by a constant (what the chain costs)
  end_to_end      a stream pre-filled with --events events (publishing is not timed), then
                  `run_audit` from its ready signal until the last row is committed

Targets (issue 8): end_to_end >= 50,000 events/s on 2 cores, and writer within 2x of
baseline (ratio baseline/writer <= 2).

    scripts/bench audit            # writes bench-results/audit.json
    .venv/bin/python benchmarks/bench_audit.py --events 50000 --out /tmp/audit.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sqlite3
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import msgspec

from audit import AuditOptions, Writer, open_db, run_audit
from audit import _writer as _writer_module
from audit._chain import row_hash
from audit._rows import prepare
from bus import (
    SCHEMA_VERSION,
    Accepted,
    Bus,
    EmbeddedNats,
    Finished,
    Log,
    Message,
    ModelCall,
    Settings,
    Subjects,
    ToolCall,
    ToolResult,
    Usage,
    new_task_id,
)

TARGET_EPS = 50_000
HEADERS = {"Taskbus-Schema": SCHEMA_VERSION}
TARGET_RATIO = 2.0


def make_events(n: int, per_task: int = 200) -> list[tuple[str, bytes]]:
    """(task_id, payload) in publish order: a realistic mix of a task's event types."""
    out: list[tuple[str, bytes]] = []
    now = datetime.now(UTC)
    task_id, seq = new_task_id(), 0
    for i in range(n):
        if seq == per_task:
            task_id, seq = new_task_id(), 0
        seq += 1
        base = {"task_id": task_id, "seq": seq, "ts": now}
        if seq == 1:
            ev = Accepted(**base, kind="task", key_id="tb_k" + str(i % 7), profile="default", model="claude-haiku-4-5")
        elif seq == per_task:
            ev = Finished(**base, status="succeeded", result="done: wrote report.txt", turns=12)
        else:
            match seq % 5:
                case 0:
                    ev = Message(**base, text=f"Looking at the files in the workspace, step {seq}.")
                case 1:
                    ev = ToolCall(**base, id=f"c{seq}", name="Bash", input={"command": f"grep -rn TODO src/ | head -{seq}"})
                case 2:
                    ev = ToolResult(**base, id=f"c{seq}", output="src/a.py:12: # TODO handle the error case\n" * 2)
                case 3:
                    ev = ModelCall(
                        **base,
                        model="claude-haiku-4-5",
                        usage=Usage(input_tokens=1200, output_tokens=80),
                        cost_usd=0.0016,
                        total_cost_usd=0.0016 * seq,
                    )
                case _:
                    ev = Log(**base, line=f"[runner] step {seq} ok")
        out.append((task_id, msgspec.json.encode(ev)))
    return out


def _rate(n: int, seconds: float) -> float:
    return n / seconds if seconds > 0 else float("inf")


def bench_baseline(events: list[tuple[str, bytes]], batch: int, tmp: Path, *, fts: bool) -> float:
    db = tmp / f"baseline{'_fts' if fts else ''}.db"
    conn = open_db(db)
    rows, texts = [], []
    for i, (task_id, payload) in enumerate(events, start=1):  # not timed: rows ready to insert
        p = prepare("events", f"taskbus.events.{task_id}", payload)
        rows.append((i, "events", i, p.ts_us, p.task_id, p.seq, p.type, p.kind, p.key_id, f"taskbus.events.{task_id}", p.body, "", ""))
        texts.append((i, p.fts) if p.fts else None)
    insert = "INSERT INTO audit VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)"
    start = time.perf_counter()
    for lo in range(0, len(rows), batch):
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany(insert, rows[lo : lo + batch])
        if fts:
            conn.executemany("INSERT INTO audit_fts (rowid, text) VALUES (?, ?)", [t for t in texts[lo : lo + batch] if t is not None])
        conn.execute("COMMIT")
    elapsed = time.perf_counter() - start
    conn.close()
    return _rate(len(rows), elapsed)


def bench_writer(events: list[tuple[str, bytes]], batch: int, tmp: Path, *, commit: bool = True, chain: bool = True) -> float:
    """Writer.write_batch per batch, as the service calls it (``commit=False``: the Python
    part alone: decode, redaction check, task->key, hash chain; ``chain=False``: the same
    writer with hashing replaced by a constant, to show what the chain itself costs)."""
    conn = open_db(tmp / f"writer-{time.monotonic_ns()}.db")
    writer = Writer(conn)
    if not chain:
        _writer_module.row_hash = lambda prev, content: b""
    incoming = [("events", i, f"taskbus.events.{t}", p) for i, (t, p) in enumerate(events, start=1)]
    step = writer.write_batch if commit else writer.prepare
    start = time.perf_counter()
    for lo in range(0, len(incoming), batch):
        step(incoming[lo : lo + batch])
    elapsed = time.perf_counter() - start
    _writer_module.row_hash = row_hash
    writer.close()
    conn.close()
    return _rate(len(incoming), elapsed)


async def bench_end_to_end(events: list[tuple[str, bytes]], batch: int, tmp: Path) -> dict[str, float]:
    server = EmbeddedNats(tmp / "nats")
    server.start()
    try:
        subjects = Subjects("bench")
        settings = Settings.load({}, data_dir=str(tmp / "data"), nats_url=server.url, subject_prefix="bench")
        async with await Bus.open(server.url, subjects, name="bench") as bus:
            await bus.ensure_streams()
            t0 = time.perf_counter()
            for lo in range(0, len(events), 2000):  # pre-fill (not part of the measurement)
                await asyncio.gather(
                    *(  # with the header every bus.publish adds, as runners publish
                        bus.js.publish(subjects.events(t), p, timeout=30, headers=HEADERS) for t, p in events[lo : lo + 2000]
                    )
                )
            fill_s = time.perf_counter() - t0
        db = tmp / "data" / "audit.db"
        stop, ready = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(
            run_audit(settings, db_path=db, stop=stop, ready=ready, options=AuditOptions(fetch_batch=batch, max_batch=max(batch, 5000)))
        )
        await asyncio.wait_for(ready.wait(), 30)
        start = time.perf_counter()
        probe = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        while (probe.execute("SELECT MAX(id) FROM audit").fetchone()[0] or 0) < len(events):
            if task.done():
                task.result()
            await asyncio.sleep(0.02)
        elapsed = time.perf_counter() - start
        probe.close()
        stop.set()
        await asyncio.wait_for(task, 30)
        return {"eps": _rate(len(events), elapsed), "seconds": elapsed, "prefill_seconds": fill_s}
    finally:
        server.stop()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=50_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=3, help="Interleaved rounds of the SQLite stages (best kept).")
    parser.add_argument("--e2e-rounds", type=int, default=2, help="End-to-end runs (best kept).")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()

    load_before = os.getloadavg()
    events = make_events(args.events)
    avg_bytes = sum(len(p) for _, p in events) / len(events)
    best: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-audit-") as tmp_dir:
        tmp = Path(tmp_dir)
        for _ in range(args.rounds):  # interleaved rounds, best of each: this machine is shared
            for name, fn in (
                ("baseline", lambda: bench_baseline(events, args.batch, tmp, fts=True)),
                ("baseline_nofts", lambda: bench_baseline(events, args.batch, tmp, fts=False)),
                ("writer", lambda: bench_writer(events, args.batch, tmp)),
                ("prepare", lambda: bench_writer(events, args.batch, tmp, commit=False)),
                ("no_chain", lambda: bench_writer(events, args.batch, tmp, chain=False)),
            ):
                best[name] = max(best.get(name, 0.0), fn())
            for f in tmp.glob("*.db*"):
                f.unlink()
        e2e_runs = []
        for i in range(args.e2e_rounds):
            e2e_runs.append(asyncio.run(bench_end_to_end(events, args.batch, tmp / f"e2e{i}")))
        e2e = max(e2e_runs, key=lambda r: r["eps"])
    baseline, baseline_nofts, writer = best["baseline"], best["baseline_nofts"], best["writer"]

    ratio = baseline / writer
    results = {
        "benchmark": "audit",
        "events": args.events,
        "batch": args.batch,
        "rounds": args.rounds,
        "load_average_before": load_before,
        "avg_event_bytes": round(avg_bytes, 1),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "eps": {
            "baseline_executemany_fts": round(baseline),
            "baseline_executemany_nofts": round(baseline_nofts),
            "writer_with_chain": round(writer),
            "writer_python_part_only": round(best["prepare"]),
            "writer_without_chain": round(best["no_chain"]),
            "end_to_end_from_stream": round(e2e["eps"]),
        },
        "ratios": {
            "baseline_over_writer": round(ratio, 2),
            "fts_cost_nofts_over_fts": round(baseline_nofts / baseline, 2),
            "chain_cost_nochain_over_writer": round(best["no_chain"] / writer, 2),
            "end_to_end_over_target": round(e2e["eps"] / TARGET_EPS, 2),
        },
        "targets": {
            "end_to_end_eps_min": TARGET_EPS,
            "baseline_over_writer_max": TARGET_RATIO,
            "end_to_end_met": e2e["eps"] >= TARGET_EPS,
            "ratio_met": ratio <= TARGET_RATIO,
        },
        "prefill_seconds": round(e2e["prefill_seconds"], 2),
        "end_to_end_all_runs": [round(r["eps"]) for r in e2e_runs],
        "load_average_after": os.getloadavg(),
    }
    print(
        f"audit ingest, {args.events} events (~{avg_bytes:.0f} B each), batches of {args.batch}, "
        f"{os.cpu_count()} cpus, sqlite {sqlite3.sqlite_version}"
    )
    print(f"{'stage':<34}{'events/s':>12}")
    for name, value in results["eps"].items():
        print(f"{name:<34}{value:>12,}")
    print(f"baseline / writer: {ratio:.2f}x (target <= {TARGET_RATIO}x: {'met' if ratio <= TARGET_RATIO else 'NOT met'})")
    print(f"end to end: {e2e['eps']:,.0f} events/s (target >= {TARGET_EPS:,}: {'met' if e2e['eps'] >= TARGET_EPS else 'NOT met'})")
    print(f"FTS cost: executemany without FTS is {baseline_nofts / baseline:.2f}x faster")
    print(f"chain cost: the writer without hashing is {best['no_chain'] / writer:.2f}x faster")
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=2) + "\n")
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
