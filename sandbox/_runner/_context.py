"""What every sandboxed run of one runner shares: one frozen object handed to
``TaskRun``, ``AgentSandbox``, ``ClaudeCliProvider`` and the warm pool instead of the
same seven collaborators threaded through each."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from bus import Settings

from .._gateway import Upstream
from .._sandboxes import SandboxBackend


@dataclass(frozen=True, slots=True)
class RunnerContext:
    settings: Settings
    backend: SandboxBackend
    upstream: Upstream
    """The model API client every gateway of this runner forwards through."""
    runner_id: str
    run_root: Path
    """``<data_dir>/runs/<runner>``: one folder per task (workspace, policy files)."""
    socket_root: Path
    """The runner's private 0700 socket folder: one folder per task (gateway, hook sockets)."""
    shared_dir: Path
    """Read-only files every sandbox of this runner mounts (hook, forwarder, managed settings)."""

    def run_dir(self, task_id: str) -> Path:
        return self.run_root / task_id

    def sock_dir(self, task_id: str) -> Path:
        return self.socket_root / task_id
