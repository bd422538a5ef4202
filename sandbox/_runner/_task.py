"""Running one ``run_task`` job: workspace, model gateway, sandbox, Claude Code, artifacts.

Everything the task made on the host (its run folder: workspace, gateway socket,
policy files) is removed at the end, whatever happened; the sandbox is destroyed by
its context manager, also on cancel and timeout.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from bus import (
    Artifact,
    Job,
    Log,
    ModelCall,
    Security,
    Settings,
    Started,
    TaskRequest,
    Usage,
    redact,
)

from .._gateway import CallRecord, ModelGateway, SecurityNotice, Upstream, new_placeholder_key
from .._sandboxes import SandboxBackend, spec_from_policy
from .._tools import find_claude
from ._claude import (
    MANAGED_SETTINGS,
    OPT_DIR,
    ClaudeOutcome,
    claude_argv,
    claude_env,
    translate,
    write_policy_files,
)
from ._events import TaskEvents
from ._workspace import snapshot, store_artifacts, write_inputs

logger = logging.getLogger(__name__)

FORWARDER_READY_TIMEOUT_S = 20.0
MAX_LOG_LINES = 200


@dataclass
class TaskOutcome:
    status: str
    result: str = ""
    reason: str | None = None
    usage: Usage = field(default_factory=Usage)
    cost_usd: float = 0.0
    turns: int = 0
    diff: str | None = None
    model: str | None = None


def _remove(*paths: Path) -> None:
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)


def socket_root_for(run_root: Path) -> Path:
    """A short folder for gateway sockets (unix socket paths are limited to 107 bytes)."""
    import hashlib
    import tempfile

    digest = hashlib.sha256(str(run_root).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"taskbus-{digest}"


def forwarder_source() -> bytes:
    return resources.files("sandbox").joinpath("_forwarder.py").read_bytes()


class TaskRun:
    """One task on one runner. ``await TaskRun(...).run()`` returns the outcome; the
    caller publishes ``finished``. Cancellation propagates (the caller decides why)."""

    def __init__(
        self,
        settings: Settings,
        job: Job,
        events: TaskEvents,
        *,
        backend: SandboxBackend,
        upstream: Upstream,
        runner_id: str,
        run_root: Path,
        socket_root: Path,
    ) -> None:
        self.settings = settings
        self.job = job
        self.policy = job.policy
        self.request: TaskRequest = job.request  # type: ignore[assignment]
        self.events = events
        self.backend = backend
        self.upstream = upstream
        self.runner_id = runner_id
        self.run_dir = run_root / job.task_id
        self.sock_dir = socket_root / job.task_id
        self.usage = Usage()
        self.outcome = ClaudeOutcome(allowed_tools=tuple(self.policy.tools))
        self.sandbox: Any = None
        self.gateway: ModelGateway | None = None
        self._log_lines = 0

    async def run(self) -> TaskOutcome:
        try:
            return await self._run()
        finally:
            await asyncio.shield(asyncio.to_thread(_remove, self.run_dir, self.sock_dir))

    async def _on_call(self, record: CallRecord) -> None:
        self.usage = self.usage + record.usage
        await self.events.emit(
            ModelCall, model=record.model, usage=record.usage, cost_usd=record.cost_usd,
            total_cost_usd=record.total_cost_usd, duration_ms=record.duration_ms,
            status=record.status, stop_reason=record.stop_reason,
        )

    async def _on_security(self, notice: SecurityNotice) -> None:
        await self.events.emit(Security, kind=notice.kind, detail=notice.detail, severity=notice.severity)

    async def _emit_named(self, name: str, **fields: Any) -> None:
        await self.events.emit({"artifact": Artifact, "log": Log}[name], **fields)

    async def _run(self) -> TaskOutcome:
        workspace = self.run_dir / "workspace"
        opt_dir, etc_dir, sock_dir = self.run_dir / "opt", self.run_dir / "etc", self.sock_dir
        workspace.mkdir(parents=True)
        originals = write_inputs(workspace, self.request.files, max_bytes=self.settings.artifact_max_bytes)
        before = snapshot(workspace)
        claude = find_claude(self.settings)
        write_policy_files(opt_dir, etc_dir, self.policy, forwarder_source())
        placeholder = new_placeholder_key()
        secrets = (placeholder, self.settings.upstream_api_key)
        started = time.monotonic()
        async with ModelGateway(
            self.settings, self.policy, sock_dir / "model.sock", placeholder,
            upstream=self.upstream, on_call=self._on_call, on_security=self._on_security,
        ) as gateway:
            self.gateway = gateway
            spec = spec_from_policy(
                self.policy,
                runner_id=self.runner_id,
                workspace=str(workspace),
                ro_mounts=[
                    (str(claude.parent), "/opt/claude"),
                    (str(opt_dir), OPT_DIR),
                    (str(etc_dir), str(Path(MANAGED_SETTINGS).parent)),
                ],
                socket_dir=str(sock_dir),
            )
            async with await self.backend.create(spec) as sandbox:
                self.sandbox = sandbox
                await self.events.emit(Started, runner_id=self.runner_id, backend=self.backend.name, sandbox_id=sandbox.id)
                if sandbox.workspace != workspace:  # a pooled sandbox has its own workspace folder
                    workspace = sandbox.workspace
                    originals = write_inputs(workspace, self.request.files, max_bytes=self.settings.artifact_max_bytes)
                    before = snapshot(workspace)
                forwarder = await sandbox.exec(
                    ["python3", "-I", f"{OPT_DIR}/forwarder.py", "--listen", "127.0.0.1:8080", "--socket", "/run/taskbus/model.sock"],
                    cwd="/tmp",
                )
                await self._wait_ready(forwarder)
                drain = asyncio.create_task(self._drain(forwarder), name=f"forwarder-log-{self.job.task_id}")
                try:
                    exit_code = await self._run_claude(sandbox, f"/opt/claude/{claude.name}", placeholder, secrets)
                finally:
                    drain.cancel()
                    await asyncio.gather(drain, return_exceptions=True)
                timed_out = sandbox.timed_out
                diff = await store_artifacts(
                    self.events.bus, self.settings, self.job.task_id, workspace, before, originals, self._emit_named
                ) if not timed_out else None
        logger.info(
            "task %s: claude exited %s after %.1fs (%d turns, $%.6f)",
            self.job.task_id, exit_code, time.monotonic() - started, self.outcome.turns, gateway.spent_usd,
        )
        return self._outcome(exit_code, timed_out, gateway, diff, secrets)

    async def _wait_ready(self, forwarder: Any) -> None:
        try:
            async with asyncio.timeout(FORWARDER_READY_TIMEOUT_S):
                async for stream, line in forwarder:
                    if stream == "stdout" and line.startswith("ready"):
                        return
                    await self.events.emit(Log, line=f"forwarder: {line}", stream="runner")
        except TimeoutError:
            pass
        raise RuntimeError("the model forwarder inside the sandbox did not start")

    async def _drain(self, forwarder: Any) -> None:
        """Keep reading the forwarder's output so it never blocks on a full pipe."""
        async for _stream, line in forwarder:
            if self._log_lines < MAX_LOG_LINES:
                self._log_lines += 1
                await self.events.emit(Log, line=f"forwarder: {line[:500]}", stream="runner")

    async def _run_claude(self, sandbox: Any, binary: str, placeholder: str, secrets: tuple[str, ...]) -> int:
        argv = claude_argv(binary, self.policy)
        proc = await sandbox.exec(argv, env=claude_env(placeholder), stdin=self.request.description.encode())
        async for stream, line in proc:
            if stream == "stdout":
                for event_type, fields in translate(line, self.outcome, secrets):
                    await self.events.emit(event_type, **fields)
            elif line.strip() and self._log_lines < MAX_LOG_LINES:
                self._log_lines += 1
                await self.events.emit(Log, line=redact(line[:2000], secrets), stream="stderr")
        return await proc.wait()

    def _outcome(self, exit_code: int, timed_out: bool, gateway: ModelGateway, diff: str | None, secrets: tuple[str, ...]) -> TaskOutcome:
        common = {"usage": self.usage, "cost_usd": gateway.spent_usd, "turns": self.outcome.turns, "diff": diff, "model": self.policy.model}
        if timed_out:
            return TaskOutcome(status="timeout", reason="wall_clock", result=f"the task ran out of its {self.policy.timeout_s}s time limit", **common)
        if gateway.exhausted:
            return TaskOutcome(status="budget_exceeded", reason="cost_cap",
                               result=f"the task reached its cost cap of ${self.policy.max_cost_usd:.4f}; "
                               "raise max_cost_usd to let it go further", **common)
        if not self.outcome.seen_result:
            return TaskOutcome(status="failed", reason="agent_crashed",
                               result=f"Claude Code exited with status {exit_code} without a result (see the log events)", **common)
        if self.outcome.is_error:
            reason = self.outcome.subtype or "agent_error"
            text = self.outcome.result or f"Claude Code ended with {reason}"
            return TaskOutcome(status="failed", reason=reason, result=redact(text, secrets), **common)
        return TaskOutcome(status="succeeded", result=self.outcome.result, **common)
