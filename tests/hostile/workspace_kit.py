"""Kit for the hostile-workspace tests: payloads the agent leaves running, a heartbeat
watch, a runner with a concurrent innocent task, and reading back every artifact."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import importlib.util
import itertools
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType

import msgspec

import bus as bus_module
from bus import Artifact, Event, Finished, Settings
from sandbox import Runner

_RUNNER_TESTS = Path(__file__).resolve().parent.parent / "runner"
sys.path.insert(0, str(_RUNNER_TESTS))
from runner_kit import follow, make_job, scripted_model, submit  # noqa: E402


def _runner_fixtures() -> ModuleType:
    """tests/runner/conftest.py under its own name: its ``image_cache`` and
    ``runner_settings`` fixtures, for a test module to import."""
    spec = importlib.util.spec_from_file_location("hostile_runner_fixtures", _RUNNER_TESTS / "conftest.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


runner_fixtures = _runner_fixtures()


HEARTBEAT_S = 1.0

# Swaps two names atomically (renameat2 RENAME_EXCHANGE), as fast as it can, forever.
_EXCHANGE = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
NR = {"x86_64": 316, "aarch64": 276}[os.uname().machine]
def exchange(a, b):
    libc.syscall(NR, -100, a.encode(), -100, b.encode(), 2)
"""

SYMLINK_RACER = (
    _EXCHANGE
    + r"""
canary, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    with open("out%d.txt" % i, "w") as f:
        f.write("decoy %d\n" % i)
    os.symlink(canary, ".swap%d" % i)
os.symlink(canary, "static-link.txt")
os.mkdir("sub")
os.symlink(os.path.dirname(canary), "sub/dir-link")
open("racer.ready", "w").close()
while True:
    for i in range(n):
        exchange("out%d.txt" % i, ".swap%d" % i)
"""
)

SPECIAL_RACER = (
    _EXCHANGE
    + r"""
import socket
n = int(sys.argv[1])
os.mkfifo("direct.fifo.txt")
keep = []
for i in range(n):
    with open("pipe%d.txt" % i, "w") as f:
        f.write("file %d\n" % i)
    os.mkfifo(".fifo%d" % i)
    with open("sock%d.txt" % i, "w") as f:
        f.write("file %d\n" % i)
    s = socket.socket(socket.AF_UNIX)
    s.bind(".sock%d" % i)
    s.listen(1)
    keep.append(s)
open("racer.ready", "w").close()
while True:
    for i in range(n):
        exchange("pipe%d.txt" % i, ".fifo%d" % i)
        exchange("sock%d.txt" % i, ".sock%d" % i)
"""
)


def background(script: str, *args: str) -> str:
    """A Bash command that starts ``script`` (python) detached from the tool call, in its own
    session, and returns once it says it is ready."""
    encoded = base64.b64encode(script.encode()).decode()
    argv = " ".join(args)
    return (
        f"echo {encoded} | base64 -d > /tmp/racer.py && "
        f"(setsid nohup python3 /tmp/racer.py {argv} > /tmp/racer.log 2>&1 &) ; "
        "for i in $(seq 200); do [ -e racer.ready ] && break; sleep 0.1; done; "
        "ls racer.ready && echo RACER-RUNNING"
    )


def bash_script(command: str, final: str = "Done.") -> str:
    """A scripted-model conversation: one Bash call, then a final text."""
    return (
        '[[turns]]\ntext = "Working."\n'
        f'tool_use = [{{ name = "Bash", input = {{ command = {toml_string(command)}, description = "work" }} }}]\n\n'
        f"[[turns]]\nafter_tool_result = true\ntext = {toml_string(final)}\n"
    )


def toml_string(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass
class Beats:
    """Arrival times of one runner's heartbeats."""

    times: list[float] = field(default_factory=list)

    def worst_gap(self, start: float, end: float) -> float:
        """The longest time without a heartbeat between ``start`` and ``end``."""
        points = [start, *(t for t in self.times if start < t < end), end]
        return max(b - a for a, b in itertools.pairwise(points))


@contextlib.asynccontextmanager
async def watch_heartbeats(b: bus_module.Bus, runner_id: str) -> AsyncIterator[Beats]:
    beats = Beats()

    async def on_beat(_msg: object) -> None:
        beats.times.append(time.monotonic())

    sub = await b.nc.subscribe(b.subjects.runner(runner_id), cb=on_beat)
    try:
        yield beats
    finally:
        await sub.unsubscribe()


@dataclass
class AttackRun:
    events: list[Event]
    other: list[Event]
    beats: Beats
    window: tuple[float, float]
    artifacts: dict[str, bytes]
    pooled_ids: set[str] = field(default_factory=set)
    """Idle warm-pool containers just before the attack (``pooled``)."""

    @property
    def finished(self) -> Finished:
        last = self.events[-1]
        assert isinstance(last, Finished)
        return last

    def worst_gap(self) -> float:
        return self.beats.worst_gap(*self.window)


async def read_artifacts(b: bus_module.Bus, events: list[Event]) -> dict[str, bytes]:
    store = await b.js.object_store(b.subjects.artifacts_bucket)
    out = {}
    for e in events:
        if isinstance(e, Artifact):
            out[e.path] = (await store.get(e.object_key)).data or b""
    return out


async def fill_pool(b: bus_module.Bus, settings: Settings, runner_id: str, **policy: object) -> set[str]:
    """Run one task with the attack's limits (its take starts the pool filler), wait until
    a pooled container of this runner is idle; its sandbox ids."""
    from sandbox._sandboxes import DockerBackend

    first = make_job(settings, bus_module.TaskRequest(description="[script:write-a-file] warm up"), tools=["Bash"], **policy)
    await submit(b, first)
    await follow(b, first.task_id)
    async with asyncio.timeout(120):
        while True:
            idle = {i.id for i in await DockerBackend(settings).list() if i.state == "pooled" and i.runner_id == runner_id}
            if idle:
                return idle
            await asyncio.sleep(0.2)


async def warm_up(b: bus_module.Bus, settings: Settings, runner: Runner, **policy: object) -> None:
    """Run one task of the attack's class (Bash only), then wait for a warm agent of it."""
    first = make_job(settings, bus_module.TaskRequest(description="[script:write-a-file] warm up"), tools=["Bash"], **policy)
    await submit(b, first)
    await follow(b, first.task_id)
    assert runner.warm is not None
    async with asyncio.timeout(120):
        while not runner.warm.idle_total():
            await asyncio.sleep(0.1)


async def run_attack(
    b: bus_module.Bus,
    settings: Settings,
    tmp_path: Path,
    *,
    backend: str,
    runner_id: str,
    script: str,
    during: object = None,
    timeout: float = 300,
    pooled: bool = False,
    warm: bool | None = None,
    **policy: object,
) -> AttackRun:
    """Run the attack task and, at the same time on the same runner (2 slots), an innocent
    write-a-file task; watch the runner's heartbeats meanwhile. ``during(job, settings)``
    (optional coroutine function) runs while the attack task runs. ``pooled`` (Docker):
    a warm pool of 1, filled by a first task, so the attack gets a pooled container.
    ``warm`` (both backends): warm agents on, a first task of the attack's class, so the
    attack runs on a warm agent (whose sandbox is removed after collection); unset, it
    follows ``TASKBUS_TEST_WARM=1`` (except for ``pooled`` attacks)."""
    if warm is None:
        warm = os.environ.get("TASKBUS_TEST_WARM") == "1" and not pooled
    settings = msgspec.structs.replace(
        settings, heartbeat_s=HEARTBEAT_S, docker_warm_pool=1 if pooled else 0, warm_agents_per_class=1 if warm else 0
    )
    async with scripted_model(settings, tmp_path, scripts={"attack": script}) as (settings, _model):
        async with watch_heartbeats(b, runner_id) as beats, Runner(settings, backend=backend, slots=2, runner_id=runner_id) as runner:
            pooled_ids = await fill_pool(b, settings, runner_id, **policy) if pooled else set()
            if warm:
                await warm_up(b, settings, runner, timeout_s=240, **policy)
            job = make_job(settings, bus_module.TaskRequest(description="[script:attack] go"), tools=["Bash"], timeout_s=240, **policy)
            other = make_job(settings, bus_module.TaskRequest(description="[script:write-a-file] innocent"), tools=["Bash"])
            start = time.monotonic()
            await submit(b, job)
            await submit(b, other)
            extra = asyncio.ensure_future(during(job, settings)) if during is not None else None  # type: ignore[operator]
            events, other_events = await asyncio.gather(follow(b, job.task_id, timeout=timeout), follow(b, other.task_id, timeout=timeout))
            end = time.monotonic()
            if extra is not None:
                await extra
        return AttackRun(events, other_events, beats, (start, end), await read_artifacts(b, events), pooled_ids)
