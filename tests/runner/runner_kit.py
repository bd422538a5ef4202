"""Helpers for runner tests: the scripted model as upstream, signed jobs, following events,
``taskbus runner`` as a separate process (for kill and restart tests)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
from nats.js.api import DeliverPolicy

import bus
from bus import Bus, Event, Finished, Settings, Started, ToolCall
from bus._tied import spawn_tied
from sandbox import ScriptedModelServer

ROOT = Path(__file__).resolve().parents[2]


@contextlib.asynccontextmanager
async def scripted_model(
    settings: Settings, tmp_path: Path, *, api_key: str | None = None, scripts: dict[str, str] | None = None
) -> AsyncIterator[tuple[Settings, ScriptedModelServer]]:
    """A scripted model server (plus extra TOML ``scripts`` by name), and settings whose
    upstream is it (with the real key, if any)."""
    from sandbox._scripted import parse_script

    extra = {name: parse_script(text, source=name, name=name) for name, text in (scripts or {}).items()}
    async with ScriptedModelServer(log_path=tmp_path / "model-requests.jsonl", required_api_key=api_key, scripts=extra) as model:
        yield msgspec.structs.replace(settings, upstream_url=model.url, upstream_api_key=api_key or "scripted-model-key"), model


def make_job(
    settings: Settings,
    request: bus.TaskRequest | bus.CompleteRequest,
    *,
    task_id: str | None = None,
    secret: str | None = None,
    **policy: Any,
) -> bus.Job:
    task_id = task_id or bus.new_task_id()
    kind = bus.kind_of(request)
    defaults: dict[str, Any] = {
        "task_id": task_id,
        "kind": kind,
        "key_id": "tb_test",
        "profile": "test",
        "model": "claude-sonnet-4-6",
        "models": ["claude-sonnet-4-6", "claude-opus-4-8", "claude-haiku-4-5"],
        "tools": ["Bash", "Read", "Write", "Edit", "Glob", "Grep"],
        "max_cost_usd": 5.0,
        "timeout_s": 120,
        "memory_mb": 1024,
        "pids": 512,
        "disk_mb": 256,
        "max_turns": 20,
    }
    defaults.update(policy)
    pol = bus.Policy(**defaults)
    signature = bus.sign_job(task_id, pol, request, secret if secret is not None else settings.job_secret)
    return bus.Job(task_id=task_id, policy=pol, request=request, signature=signature)


async def submit(b: Bus, job: bus.Job, *, accepted: bool = True) -> None:
    """Publish like the server does: ``accepted`` as seq 1, then the job."""
    if accepted:
        await b.publish(
            b.subjects.events(job.task_id),
            bus.Accepted(
                task_id=job.task_id,
                seq=1,
                ts=bus.utcnow(),
                kind=job.policy.kind,
                key_id=job.policy.key_id,
                profile=job.policy.profile,
                model=job.policy.model,
            ),
            msg_id=f"{job.task_id}-1",
        )
    await b.publish(b.subjects.jobs(job.policy.kind), job, msg_id=job.task_id)


async def follow(b: Bus, task_id: str, *, timeout: float = 120) -> list[Event]:
    """Every event of the task from seq 1 until ``finished``."""
    sub = await b.js.subscribe(b.subjects.events(task_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    events: list[Event] = []
    try:
        async with asyncio.timeout(timeout):
            while not events or not isinstance(events[-1], Finished):
                msg = await sub.next_msg(timeout=timeout)
                events.append(bus.decode_event(msg.data))
    finally:
        await sub.unsubscribe()
    return events


def assert_gapless(events: list[Event]) -> None:
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert sum(isinstance(e, Finished) for e in events) == 1 and isinstance(events[-1], Finished)


async def first_tool_call(b: Bus, task_id: str, *, timeout: float = 120) -> Started:
    """The task's ``started`` event, once the agent made its first tool call (it really runs)."""
    sub = await b.js.subscribe(b.subjects.events(task_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    started: Started | None = None
    try:
        async with asyncio.timeout(timeout):
            while True:
                event = bus.decode_event((await sub.next_msg(timeout=timeout)).data)
                if isinstance(event, Started):
                    started = event
                elif isinstance(event, ToolCall) and started is not None:
                    return started
    finally:
        await sub.unsubscribe()


def runner_process(
    settings: Settings, runner_id: str, backend: str, log: Path, *, env: dict[str, str] | None = None, args: tuple[str, ...] = ()
) -> subprocess.Popen[bytes]:
    """``taskbus runner`` (kind task, 2 s grace, ``args`` added) on ``settings``' NATS, data dir,
    secret and upstream, plus ``env``; in its own session, output appended to ``log``; it
    gets SIGTERM if the test process dies."""
    base = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/root"),
        "TASKBUS_NATS_URL": settings.nats_url,
        "TASKBUS_SUBJECT_PREFIX": settings.subject_prefix,
        "TASKBUS_DATA_DIR": settings.data_dir,
        "TASKBUS_JOB_SECRET": settings.job_secret,
        "TASKBUS_UPSTREAM_URL": settings.upstream_url,
        "TASKBUS_UPSTREAM_API_KEY": settings.upstream_api_key,
    }
    argv = [sys.executable, "-m", "cli", "runner", "--id", runner_id, "--backend", backend, "--kinds", "task", "--grace", "2", *args]
    with log.open("ab") as out:  # the child has its own copy of the descriptor
        return spawn_tied(argv, env={**base, **(env or {})}, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(ROOT))


async def exited(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """Wait for ``proc`` off the event loop (NATS and the model server keep running meanwhile)."""
    return await asyncio.to_thread(proc.wait, timeout)
