"""Child processes of ``taskbus up``: start in order, restart with backoff, stop in reverse.

Each child runs in its own session (its own process group), so a Ctrl-C at the terminal
reaches only the supervisor, which then stops the children in the reverse order of their
start: SIGTERM to the group, a deadline, SIGKILL to the group. Output goes to
``<log_dir>/<name>.log``. A child that exits on its own after start-up is restarted
after a jittered exponential backoff (bus.Backoff, reset once it has stayed up for
``healthy_after_s``); one
that exits during start-up fails the whole start with the tail of its log.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import socket
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from bus import Backoff, TaskbusError

from ._readyfile import ready_pid

logger = logging.getLogger(__name__)

Probe = Callable[["ChildState"], Awaitable[bool]]


class UpError(TaskbusError):
    """``taskbus up`` could not start (or keep) its stack."""

    code = "up_failed"


class StartInterrupted(UpError):
    """A stop was asked for while the stack was starting."""

    code = "up_interrupted"


@dataclass(frozen=True, kw_only=True)
class ChildSpec:
    name: str
    argv: list[str]
    env: dict[str, str]
    label: str = ""
    """Shown next to the name in the panel and the log (e.g. "offline scripted model")."""
    probe: Probe | None = None
    """Readiness check, polled until it returns True; None = ready once started."""
    stop_timeout_s: float = 10.0
    """Between SIGTERM and SIGKILL."""
    wave: int = 0
    """Children of one wave start together, after every child of the previous wave is ready."""


@dataclass(kw_only=True)
class ChildState:
    spec: ChildSpec
    log_path: Path
    pid: int | None = None
    state: str = "waiting"
    """waiting, starting, ready, backoff, stopping, stopped, failed."""
    restarts: int = 0
    started_at: float = 0.0
    last_exit: int | None = None
    error: str = ""
    process: asyncio.subprocess.Process | None = field(default=None, repr=False)
    ready: asyncio.Event = field(default_factory=asyncio.Event, repr=False)

    def log_tail(self, chars: int = 1500) -> str:
        try:
            return self.log_path.read_bytes()[-chars:].decode(errors="replace").strip()
        except OSError:
            return ""


def tcp_probe(host: str, port: int) -> Probe:
    async def probe(_: ChildState) -> bool:
        try:
            async with asyncio.timeout(1.0):
                _reader, writer = await asyncio.open_connection(host, port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    return probe


def ready_file_probe(path: Path) -> Probe:
    """Ready once the child wrote its own pid to ``path`` (_readyfile.py)."""

    async def probe(child: ChildState) -> bool:
        return child.pid is not None and ready_pid(path) == child.pid

    return probe


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _signal_group(pid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)


class Supervisor:
    """``async with Supervisor(specs, log_dir=...) as sup:`` starts every child (wave by
    wave, each wave ready before the next) and stops them all (in reverse list order) on exit."""

    def __init__(
        self,
        specs: list[ChildSpec],
        *,
        log_dir: Path,
        on_change: Callable[[], None] | None = None,
        stop: asyncio.Event | None = None,
        start_timeout_s: float = 60.0,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        healthy_after_s: float = 30.0,
    ) -> None:
        self.log_dir = log_dir
        self.children = [ChildState(spec=s, log_path=log_dir / f"{s.name}.log") for s in specs]
        self._on_change = on_change or (lambda: None)
        self._stop = stop or asyncio.Event()
        self._start_timeout_s = start_timeout_s
        self._backoff_initial_s = backoff_initial_s
        self._backoff_max_s = backoff_max_s
        self._healthy_after_s = healthy_after_s
        self._stopping = False
        self._starting = True
        self._tg: asyncio.TaskGroup | None = None
        self._monitors: dict[str, asyncio.Task[None]] = {}
        self._wake: dict[str, asyncio.Event] = {}

    def child(self, name: str) -> ChildState:
        return next(c for c in self.children if c.spec.name == name)

    def _changed(self) -> None:
        try:
            self._on_change()
        except Exception:  # a display problem must not take the stack down
            logger.exception("status update failed")

    async def __aenter__(self) -> Supervisor:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        try:
            for wave in sorted({c.spec.wave for c in self.children}):
                batch = [c for c in self.children if c.spec.wave == wave]
                for child in batch:
                    self._wake[child.spec.name] = asyncio.Event()
                    self._monitors[child.spec.name] = self._tg.create_task(self._monitor(child), name=child.spec.name)
                for child in batch:
                    await self._wait_ready(child)
        except BaseException:
            await asyncio.shield(self._shutdown())
            await self._tg.__aexit__(None, None, None)  # the monitors are cancelled: nothing to report
            raise
        self._starting = False
        return self

    async def _wait_ready(self, child: ChildState) -> None:
        ready = asyncio.create_task(child.ready.wait())
        stop = asyncio.create_task(self._stop.wait())
        monitor = self._monitors[child.spec.name]
        try:
            done, _ = await asyncio.wait({ready, monitor, stop}, timeout=self._start_timeout_s, return_when=asyncio.FIRST_COMPLETED)
        finally:
            ready.cancel()
            stop.cancel()
        if self._stop.is_set():
            raise StartInterrupted(f"stopped while starting {child.spec.name}")
        if ready in done and child.ready.is_set():
            return
        if monitor in done:
            raise UpError(child.error or f"{child.spec.name} stopped during start-up")
        raise UpError(
            f"{child.spec.name} was not ready within {self._start_timeout_s:.0f}s; "
            f"its log ({child.log_path}) ends with:\n{child.log_tail()}"
        )

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self._shutdown())
        assert self._tg is not None
        await self._tg.__aexit__(None, None, None)

    async def _shutdown(self) -> None:
        """Stop every child, the last started first."""
        self._stopping = True
        for event in self._wake.values():
            event.set()
        try:
            for child in reversed(self.children):
                try:
                    await self._stop_child(child)
                except Exception as exc:  # noqa: BLE001 - keep stopping the others; logging may fail here too
                    with contextlib.suppress(Exception):
                        logger.error("stopping %s failed: %s", child.spec.name, exc)
        finally:
            for child in self.children:  # whatever happened above, nothing of ours outlives us
                if child.pid:
                    _signal_group(child.pid, signal.SIGKILL)
            for task in self._monitors.values():
                task.cancel()

    async def _start(self, child: ChildState) -> None:
        child.state = "starting"
        child.error = ""
        child.ready.clear()
        with child.log_path.open("ab") as log:
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} starting: {' '.join(child.spec.argv)}\n".encode())
            log.flush()
            child.process = await asyncio.create_subprocess_exec(
                *child.spec.argv,
                env=child.spec.env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        child.pid = child.process.pid
        child.started_at = time.monotonic()
        logger.info("started %s (pid %d)%s", child.spec.name, child.pid, f" [{child.spec.label}]" if child.spec.label else "")
        self._changed()

    async def _probe_until_ready(self, child: ChildState) -> None:
        """Poll the probe. A probe raising UpError during start-up stops the child with that message."""
        probe = child.spec.probe
        said = ""
        try:
            while probe is not None:
                try:
                    if await probe(child):
                        break
                except UpError as exc:
                    if self._starting:
                        child.error = exc.describe()
                        _signal_group(child.pid or 0, signal.SIGTERM)
                        return
                    if exc.message != said:
                        said = exc.message
                        logger.warning("%s is not ready: %s", child.spec.name, said)
                await asyncio.sleep(0.05)
        finally:
            close = getattr(probe, "aclose", None)
            if close is not None:
                await close()
        child.state = "ready"
        child.ready.set()
        self._changed()

    async def _monitor(self, child: ChildState) -> None:
        # at least half of each delay is kept, so a crash loop never restarts at once
        backoff = Backoff(self._backoff_initial_s, self._backoff_max_s, jitter=0.5)
        while not self._stopping:
            try:
                await self._start(child)
            except OSError as exc:
                child.state = "failed"
                child.error = f"cannot start {child.spec.name} ({child.spec.argv[0]}): {exc}"
                logger.error("%s", child.error)
                self._changed()
                return
            assert child.process is not None
            if self._stopping:  # shutdown began while it was starting
                await self._stop_child(child)
                break
            waiter = asyncio.create_task(child.process.wait())
            prober = asyncio.create_task(self._probe_until_ready(child))
            try:
                await asyncio.wait({waiter}, timeout=None)
            finally:
                prober.cancel()
            code = waiter.result()
            child.last_exit = code
            child.process = None
            if self._stopping:
                break
            _signal_group(child.pid or 0, signal.SIGKILL)  # its helpers go with it
            if self._starting:
                child.state = "failed"
                child.error = child.error or (
                    f"{child.spec.name} exited with code {code} during start-up; its log ({child.log_path}) ends with:\n{child.log_tail()}"
                )
                self._changed()
                return
            uptime = time.monotonic() - child.started_at
            if uptime >= self._healthy_after_s:
                backoff.reset()
            delay = backoff.next_delay()
            child.state = "backoff"
            child.restarts += 1
            logger.warning(
                "%s (pid %s) exited with code %s after %.1fs; restarting in %.1fs (restart %d)",
                child.spec.name,
                child.pid,
                code,
                uptime,
                delay,
                child.restarts,
            )
            self._changed()
            wake = self._wake[child.spec.name]
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), delay)
        child.state = "stopped"
        self._changed()

    async def _stop_child(self, child: ChildState) -> None:
        proc = child.process
        if proc is None or proc.returncode is not None:
            if child.pid:
                _signal_group(child.pid, signal.SIGKILL)  # leftovers of an exited child
            child.state = "stopped"
            return
        child.state = "stopping"
        self._changed()
        started = time.monotonic()
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            async with asyncio.timeout(child.spec.stop_timeout_s):
                await proc.wait()
        except TimeoutError:
            logger.warning("%s did not stop within %.0fs; killing it", child.spec.name, child.spec.stop_timeout_s)
        _signal_group(proc.pid, signal.SIGKILL)  # the group: nothing of it stays behind
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(5.0):
                await proc.wait()
        child.state = "stopped"
        logger.info("stopped %s (pid %d) in %.1fs", child.spec.name, proc.pid, time.monotonic() - started)
        self._changed()
