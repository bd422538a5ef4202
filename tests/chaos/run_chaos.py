"""Run the chaos scenarios outside pytest and print the table (``scripts/chaos``).

    scripts/chaos [--scale ci|full] [--out bench-results/chaos.json] [--only load,runner-kill,...] [--cluster]

``--cluster`` runs the rows on a 3-node NATS cluster with replicas 3 (``cluster-load``,
``cluster-node-kill``) instead of the single-server rows.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import tempfile
import time
from pathlib import Path

# as under `python -m pytest`: this folder, the project (its packages) and tests/ (the harness
# helpers: nats_users, procs). The project must come before tests/: tests/bus and the other
# test folders would otherwise be imported as namespace packages named like the project's.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(1, str(Path(__file__).resolve().parents[2]))
sys.path.append(str(Path(__file__).resolve().parents[1]))

from chaos_all import ALL
from report import print_table, write_json
from scenarios import CLUSTER_SCENARIOS, SCALES


async def main(scale_name: str, only: list[str], out: Path, *, cluster: bool = False) -> int:
    scale = SCALES[scale_name]
    rows = []
    base = Path(tempfile.mkdtemp(prefix="taskbus-chaos-"))
    for name, scenario in ALL.items():
        if only and name not in only:
            continue
        if not only and (name in CLUSTER_SCENARIOS) != cluster:
            continue
        print(f"== {name} (scale {scale.name})", file=sys.stderr, flush=True)
        started = time.monotonic()
        try:
            row = await scenario(base / name, scale)
        except Exception as exc:  # noqa: BLE001 (any failure is counted, never raised)
            import traceback

            from report import Row

            traceback.print_exc()

            row = Row(name, notes=[f"scenario raised {type(exc).__name__}: {exc}"], crashed=["scenario"])
        row.duration_s = round(time.monotonic() - started, 1)
        rows.append(row)
        print_table(rows[-1:])
    print_table(rows)
    write_json(rows, out, scale=scale.name, started=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    print(f"work folders (logs, databases) kept in {base}; JSON: {out}", file=sys.stderr)
    return 0 if all(r.verdict == "PASS" for r in rows) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scale", choices=sorted(SCALES), default="ci")
    parser.add_argument("--out", type=Path, default=Path("bench-results/chaos.json"))
    parser.add_argument("--only", default="", help="comma-separated scenario names")
    parser.add_argument("--cluster", action="store_true", help="the rows on a 3-node NATS cluster (replicas 3)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    only = [s for s in args.only.split(",") if s]
    sys.exit(asyncio.run(main(args.scale, only, args.out, cluster=args.cluster)))
