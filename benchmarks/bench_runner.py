"""Shared harness for the runner benchmarks (``task`` and ``complete``): an embedded
nats-server, the scripted model, a real Runner, and signed jobs published like the
server publishes them (``accepted`` as seq 1, then the job)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from rich.console import Console
from rich.table import Table

import bus
from bus import Bus, EmbeddedNats, Finished, Settings, Subjects
from sandbox import Runner, ScriptedModelServer

ROOT = Path(__file__).resolve().parents[1]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def ms(values: list[float], q: float) -> float:
    return round(pct(values, q) * 1000, 2)


@contextlib.asynccontextmanager
async def stack(*, image_dir: Path | None = None, **overrides: Any) -> AsyncIterator[tuple[Settings, Bus, ScriptedModelServer]]:
    """NATS + scripted model + settings (a fresh data dir sharing the built image)."""
    with tempfile.TemporaryDirectory(prefix="tb-bench-") as tmp:
        data = Path(tmp) / "data"
        data.mkdir()
        default_images = Settings.load({}).image_cache_path / "images"
        if default_images.exists():
            (data / "images").symlink_to(image_dir or default_images)
        async with EmbeddedNats(Path(tmp) / "nats") as nats_server, ScriptedModelServer() as model:
            settings = Settings.load(
                {},
                data_dir=str(data),
                nats_url=nats_server.url,
                subject_prefix="bench",
                job_secret=secrets.token_hex(16),
                upstream_url=model.url,
                upstream_api_key="bench-key",
                **overrides,
            )
            async with await Bus.open(settings.nats_url, Subjects("bench")) as b:
                await b.ensure_streams()
                yield settings, b, model


def make_job(settings: Settings, request: Any, **policy: Any) -> bus.Job:
    task_id = bus.new_task_id()
    fields: dict[str, Any] = {
        "task_id": task_id,
        "kind": bus.kind_of(request),
        "key_id": "tb_bench",
        "profile": "bench",
        "model": "claude-sonnet-4-6",
        "models": ["claude-sonnet-4-6", "claude-opus-4-8", "claude-haiku-4-5"],
        "tools": ["Bash", "Read", "Write"],
        "max_cost_usd": 5.0,
        "timeout_s": 120,
    }
    fields.update(policy)
    pol = bus.Policy(**fields)
    return bus.Job(task_id=task_id, policy=pol, request=request, signature=bus.sign_job(task_id, pol, request, settings.job_secret))


class Finisher:
    """One wildcard subscription that resolves a future per task on its ``finished``."""

    def __init__(self, b: Bus) -> None:
        self.bus = b
        self.waiting: dict[str, asyncio.Future[Finished]] = {}
        self.sub: Any = None

    async def __aenter__(self) -> Finisher:
        self.sub = await self.bus.nc.subscribe(self.bus.subjects.events_all(), cb=self._on_event)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.sub.unsubscribe()

    async def _on_event(self, msg: Any) -> None:
        if b'"finished"' not in msg.data:
            return
        event = bus.decode_event(msg.data)
        fut = self.waiting.pop(event.task_id, None)
        if fut is not None and not fut.done():
            fut.set_result(event)

    async def run(self, job: bus.Job, *, timeout: float = 180) -> tuple[float, Finished]:
        fut: asyncio.Future[Finished] = asyncio.get_running_loop().create_future()
        self.waiting[job.task_id] = fut
        started = time.perf_counter()
        await self.bus.publish(
            self.bus.subjects.events(job.task_id),
            bus.Accepted(
                task_id=job.task_id,
                seq=1,
                ts=bus.utcnow(),
                kind=job.policy.kind,
                key_id="tb_bench",
                profile="bench",
                model=job.policy.model,
            ),
            msg_id=f"{job.task_id}-1",
        )
        await self.bus.publish(self.bus.subjects.jobs(job.policy.kind), job, msg_id=job.task_id)
        finished = await asyncio.wait_for(fut, timeout)
        return time.perf_counter() - started, finished


def runner(settings: Settings, **kwargs: Any) -> Runner:
    return Runner(settings, runner_id=f"bench-{os.getpid()}-{kwargs.get('backend', 'x')}", **kwargs)


def print_table(title: str, header: list[str], rows: list[list[Any]]) -> None:
    table = Table(title=title)
    for h in header:
        table.add_column(h)
    for row in rows:
        table.add_row(*[str(c) for c in row])
    Console().print(table)


def write_json(path: str, document: dict[str, Any]) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(msgspec.json.format(msgspec.json.encode(document)))
