"""A process of a test stack (``taskbus serve``, ``runner``, ``audit run``): started in its
own session with its output appended to a log, tied to the test process (it gets SIGTERM
if the test process dies, ``bus._tied``), stopped or killed as a whole process group; and
the wait until a ``taskbus serve`` answers HTTP, which tells a port another process took
between ``free_port()`` and the bind (``PortTaken``: start it again on a fresh port)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import httpx2

from bus._tied import spawn_tied

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
SERVE_ATTEMPTS = 4
"""Starts of a server whose picked port was taken before it bound it."""
_PORT_TAKEN = "address already in use"  # EADDRINUSE as uvicorn (and nats-server) report it


class PortTaken(RuntimeError):
    """The server exited at start because its port was in use."""


@dataclass
class LoggedProcess:
    """One stack process: its argv, its log, the running Popen (None when stopped)."""

    name: str
    argv: list[str]
    log: Path
    env: dict[str, str]
    proc: subprocess.Popen[bytes] | None = None
    kills: int = 0
    """How often ``kill`` ended it (the faults a scenario injected)."""

    def start(self) -> None:
        with self.log.open("ab") as log:  # the child has its own copy of the descriptor
            self.proc = spawn_tied(
                self.argv,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=str(ROOT),
            )

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the whole process group (the fault)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        self.kills += 1

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM the group, wait, then SIGKILL; the exit code (None if it had to be killed)."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is not None:
            return proc.returncode
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            logger.warning("%s did not stop in %ss; killing it", self.name, timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
            return None

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-chars:] if self.log.exists() else ""


async def wait_serving(proc: LoggedProcess, url: str, *, timeout: float) -> None:
    """Until ``url`` answers (a 400, 401, 405 or 406 without a key or session is an answer).
    Raises PortTaken when ``proc`` exited because its port was in use, RuntimeError when it
    exited otherwise, TimeoutError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    async with httpx2.AsyncClient(timeout=2) as http:
        while True:
            if not proc.alive:
                tail = proc.tail()
                raise (PortTaken if _PORT_TAKEN in tail else RuntimeError)(f"{proc.name} exited: {tail}")
            try:
                if (await http.get(url)).status_code in (400, 401, 405, 406):
                    return
            except httpx2.TransportError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"{proc.name} did not answer on {url} within {timeout}s: {proc.tail()}")
            await asyncio.sleep(0.1)
