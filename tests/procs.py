"""A process of a test stack (``taskbus serve``, ``runner``, ``audit run``): started in its
own session with its output appended to a log, tied to the test process (it gets SIGTERM
if the test process dies, ``bus._tied``), stopped or killed as a whole process group."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path

from bus._tied import spawn_tied

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]


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
