"""NATS over TLS: what TLS (and mutual TLS) costs a Bus, against plaintext in the same run.

Three nats-servers on loopback, one config apart: plaintext, TLS with a private CA, and
TLS requiring client certificates (verify: true). For each, a Bus made by
``Bus.for_settings`` (so the same TLS path every taskbus process uses):
  connect     Bus.for_settings until connected (handshake included), median of --connects
  publish_c1  JetStream publish + ack of a 1 KiB message, one at a time (p50, p99, per s)
  publish_c32 the same with 32 publishers at once
The three are measured in turn, round after round (--rounds), so load on the machine
falls on all of them alike; the figures are the medians over the rounds.

    scripts/bench tls              # writes bench-results/tls.json
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from bench_complete import closed_loop
from bench_runner import ms, print_table, write_json

from bus import Bus, EmbeddedNats, Settings

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from tls_kit import Pki, make_pki, tls_block

PAYLOAD = b"x" * 1024
MODES = ("plaintext", "tls", "mtls")


def settings_of(mode: str, server: EmbeddedNats, pki: Pki, data: Path) -> Settings:
    tls: dict[str, str] = {}
    url = server.url
    if mode != "plaintext":
        url = f"tls://{server.host}:{server.port}"
        tls["nats_tls_ca"] = str(pki.ca)
    if mode == "mtls":
        tls |= {"nats_tls_cert": str(pki.client_cert), "nats_tls_key": str(pki.client_key)}
    return Settings.load({}, data_dir=str(data), nats_url=url, subject_prefix="bench" + uuid.uuid4().hex[:8], **tls)


def servers(stack: ExitStack, tmp: Path, pki: Pki) -> Iterator[tuple[str, EmbeddedNats]]:
    for mode in MODES:
        block = "" if mode == "plaintext" else tls_block(pki, verify=mode == "mtls")
        server = EmbeddedNats(tmp / mode, authorization=block)  # the tls block is appended verbatim
        server.start()
        stack.callback(server.stop)
        yield mode, server


async def one_round(settings: Settings, connects: int, n: int) -> dict[str, Any]:
    times = []
    for _ in range(connects):
        t = time.perf_counter()
        b = await Bus.for_settings(settings, name="bench-tls")
        times.append(time.perf_counter() - t)
        await b.close()
    out: dict[str, Any] = {"connect_ms": round(statistics.median(times) * 1000, 2)}
    async with await Bus.for_settings(settings, name="bench-tls") as b:
        stream, subject = f"BENCH_{uuid.uuid4().hex[:8]}", f"bench.{uuid.uuid4().hex[:8]}"
        await b.js.add_stream(name=stream, subjects=[subject])

        async def publish() -> None:
            await b.publish(subject, PAYLOAD)

        await closed_loop(200, 8, publish)  # warm-up
        for concurrency in (1, 32):
            count = n if concurrency > 1 else max(n // 4, 200)
            samples, wall = await closed_loop(count, concurrency, publish)
            out[f"c{concurrency}"] = {"p50_ms": ms(samples, 0.5), "p99_ms": ms(samples, 0.99), "per_s": round(count / wall, 1)}
        await b.js.delete_stream(stream)
    return out


def median_of(rounds: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "connect_ms": round(statistics.median(r["connect_ms"] for r in rounds), 2),
        **{c: {k: round(statistics.median(r[c][k] for r in rounds), 2) for k in ("p50_ms", "p99_ms", "per_s")} for c in ("c1", "c32")},
    }


async def main(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory(prefix="tb-bench-tls-") as tmp_name, ExitStack() as stack:
        tmp = Path(tmp_name)
        pki = make_pki(tmp / "pki")
        settings = {mode: settings_of(mode, server, pki, tmp / "data") for mode, server in servers(stack, tmp, pki)}
        rounds: dict[str, list[dict[str, Any]]] = {mode: [] for mode in MODES}
        for _ in range(args.rounds):
            for mode in MODES:
                rounds[mode].append(await one_round(settings[mode], args.connects, args.messages))
    results: dict[str, Any] = {mode: median_of(rounds[mode]) for mode in MODES}
    base = results["plaintext"]
    rows = []
    for mode in MODES:
        r = results[mode]
        vs = (
            "baseline"
            if mode == "plaintext"
            else (
                f"connect +{round(r['connect_ms'] - base['connect_ms'], 2)} ms; c1 p50 +{round(r['c1']['p50_ms'] - base['c1']['p50_ms'], 2)} ms; "
                f"c32 {round(r['c32']['per_s'] / base['c32']['per_s'], 2)}x msgs/s"
            )
        )
        rows.append(
            [mode, r["connect_ms"], r["c1"]["p50_ms"], r["c1"]["p99_ms"], r["c1"]["per_s"], r["c32"]["p50_ms"], r["c32"]["per_s"], vs]
        )
    print_table(
        f"NATS over TLS vs plaintext (median of {args.rounds} rounds)",
        ["mode", "connect ms", "c1 p50 ms", "c1 p99 ms", "c1 msgs/s", "c32 p50 ms", "c32 msgs/s", "vs plaintext"],
        rows,
    )
    write_json(args.out, {"benchmark": "tls", "results": results, "rounds": rounds})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connects", type=int, default=10)
    parser.add_argument("--messages", type=int, default=4000)
    parser.add_argument("--out", default="bench-results/tls.json")
    asyncio.run(main(parser.parse_args()))
