"""The backend interface (``SandboxBackend``) and the common part of a ``Sandbox``.

    backend = get_backend("bwrap", settings)
    async with await backend.create(spec) as sb:       # destroy() on exit
        ex = await sb.exec(["claude", "--version"])
        async for stream, line in ex: ...
        code = await ex.wait()
        if sb.timed_out: ...                            # the wall clock killed it

A sandbox's wall clock (``spec.timeout_s``) starts at create. When it runs out every
process inside is killed, running executions end, ``timed_out`` becomes true and
further ``exec`` calls raise ``SandboxTimeout``.
"""

from __future__ import annotations

import abc
import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol, runtime_checkable

import msgspec

from bus import SandboxError, SandboxTimeout

from ._exec import Execution
from ._spec import WORKSPACE, SandboxSpec

logger = logging.getLogger(__name__)

DESTROY_TIMEOUT_S = 10.0


class SandboxInfo(msgspec.Struct, frozen=True, kw_only=True):
    """One sandbox as ``list()`` / ``taskbus sandbox ls`` sees it."""

    id: str
    backend: str
    task_id: str
    runner_id: str
    state: str
    """running | exited | pooled | stale (its process is gone)."""
    created_at: float
    detail: str = ""


class Sandbox(abc.ABC):
    """One live sandbox. An async context manager: leaving it destroys the sandbox."""

    backend: str = ""

    def __init__(self, sandbox_id: str, spec: SandboxSpec, workspace: Path) -> None:
        self.id = sandbox_id
        self.spec = spec
        self.workspace = workspace
        """Host path of /workspace. Equal to ``spec.workspace`` except for pooled Docker
        sandboxes (see ``DockerBackend``); the runner fills and reads this one."""
        self.created_at = time.time()
        self._clock_start = self.created_at
        self._timeout_s = spec.timeout_s
        self._timed_out = False
        self._destroyed = False
        self._executions: list[Execution] = []
        self._timer: asyncio.Task[None] | None = None
        self._destroy_lock = asyncio.Lock()

    # -- wall clock
    def _start_clock(self) -> None:
        self._timer = asyncio.get_running_loop().create_task(self._clock(), name=f"sandbox-clock-{self.id}")

    def restart_clock(self, timeout_s: float) -> None:
        """Start the wall clock again at ``timeout_s`` from now (a warm agent's sandbox,
        created before its task, gets the task's own limit when the task takes it)."""
        self._check_usable()
        if self._timer is not None:
            self._timer.cancel()
        self._clock_start = time.time()
        self._timeout_s = timeout_s
        self._start_clock()

    async def _clock(self) -> None:
        await asyncio.sleep(self._timeout_s)
        logger.info("sandbox %s (task %s) hit its %ss wall clock; killing it", self.id, self.spec.task_id, self._timeout_s)
        self._timed_out = True
        try:
            await self.kill()
        except Exception:
            logger.exception("killing timed-out sandbox %s failed", self.id)

    @property
    def timed_out(self) -> bool:
        """True once the wall clock killed this sandbox."""
        return self._timed_out

    @property
    def remaining_s(self) -> float:
        return max(0.0, self._clock_start + self._timeout_s - time.time())

    def _check_usable(self) -> None:
        if self._timed_out:
            raise SandboxTimeout(f"sandbox {self.id} of task {self.spec.task_id} ran out of its {self._timeout_s}s wall clock")
        if self._destroyed:
            raise SandboxError(f"sandbox {self.id} was destroyed")

    # -- the interface
    async def exec(
        self,
        argv: list[str],
        *,
        env: dict[str, str] | None = None,
        stdin: bytes | AsyncIterator[bytes] | None = None,
        cwd: str = WORKSPACE,
    ) -> Execution:
        """Start ``argv`` inside as the sandbox user; returns at once with a handle that
        streams output lines as they come. ``env`` adds to the spec's environment.
        ``stdin`` is written and then closed; an async iterator's chunks are written as
        they come, and stdin closed when it ends (a warm agent's Claude Code waits on its
        stdin until its task comes)."""
        self._check_usable()
        if not argv:
            raise SandboxError("exec needs a command")
        ex = await self._exec(list(argv), env=env, stdin=stdin, cwd=cwd)
        self._executions = [e for e in self._executions if e.returncode is None]
        self._executions.append(ex)
        return ex

    @abc.abstractmethod
    async def _exec(
        self, argv: list[str], *, env: dict[str, str] | None, stdin: bytes | AsyncIterator[bytes] | None, cwd: str
    ) -> Execution: ...

    @abc.abstractmethod
    async def kill(self) -> None:
        """Kill every process in the sandbox (it cannot run anything afterwards)."""

    async def stop_all(self) -> bool:
        """SIGKILL every process of the sandbox and check that none is left; True only when
        that is verified (through its cgroup, which needs root), so the caller may read its
        workspace before ``destroy``. False: call ``destroy`` first."""
        return False

    @abc.abstractmethod
    async def _teardown(self) -> None:
        """Remove everything the sandbox holds; called once by destroy()."""

    async def destroy(self, *, timeout: float = DESTROY_TIMEOUT_S) -> None:
        """Kill and remove the sandbox. Idempotent; bounded by ``timeout``; logs, never raises
        for cleanup failures (the reaper retries what is left)."""
        async with self._destroy_lock:
            if self._destroyed:
                return
            self._destroyed = True
            if self._timer is not None:
                self._timer.cancel()
            started = time.monotonic()
            try:
                async with asyncio.timeout(timeout):
                    await asyncio.shield(self._teardown())
            except TimeoutError:
                logger.error("destroying sandbox %s took over %ss; the reaper will finish it", self.id, timeout)
            except Exception:
                logger.exception("destroying sandbox %s failed; the reaper will finish it", self.id)
            for ex in self._executions:
                await ex._close()
            if self._timer is not None:
                try:
                    await self._timer
                except asyncio.CancelledError:
                    pass
            logger.info("sandbox %s (task %s) destroyed in %.0f ms", self.id, self.spec.task_id, (time.monotonic() - started) * 1000)

    async def __aenter__(self) -> Sandbox:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.destroy()


@runtime_checkable
class SandboxBackend(Protocol):
    """A way to make sandboxes (``docker`` or ``bwrap``)."""

    name: str

    async def create(self, spec: SandboxSpec) -> Sandbox:
        """A started sandbox, ready for exec. Raises SandboxUnavailable / SandboxError."""
        ...

    async def reap(self, live_runner_ids: set[str], own_runner_id: str) -> int:
        """Remove sandboxes (ours only: labelled) of runners not in ``live_runner_ids``,
        and of ``own_runner_id`` left by an earlier process. Returns how many."""
        ...

    async def list(self) -> list[SandboxInfo]:
        """Every labelled sandbox of this backend on this machine."""
        ...

    async def prune(self, *, everything: bool = False) -> int:
        """Remove leftovers whatever their runner: stale bwrap sandboxes, stopped
        containers; with ``everything`` also running ones. Returns how many."""
        ...

    async def close(self) -> None:
        """Release what the backend holds (warm pool, client). Idempotent."""
        ...
