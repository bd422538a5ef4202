"""The environment one Claude Code run needs: a model gateway and the PreToolUse
decision point on unix sockets (both in the task's socket folder, mounted at
/run/taskbus), a sandbox with the CLI, the hook and the managed settings mounted
read-only, and the loopback forwarder inside that connects the CLI to the gateway.

    async with AgentSandbox(...) as agent:        # gateway up, sandbox created, forwarder ready
        proc = await agent.sandbox.exec(claude_argv(agent.claude_binary, policy), env=agent.env)

The workspace is a filesystem of its own of ``policy.disk_mb`` (``_wsmount``; a
plain folder when the runner is not root), filled by ``fill_workspace`` before the sandbox exists.
``await agent.stop()`` destroys the sandbox (every process in it is gone, a pooled
sandbox's workspace is back at ``agent.workspace``) and closes the gateway but keeps
the workspace, so the caller can collect from it. Leaving it does the same and then
unmounts and removes the host folders, whatever happened (cancel, timeout, crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import Awaitable, Callable
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bus import Policy, PolicyDenied, SandboxError

from .._gateway import CallRecord, ModelGateway, SecurityNotice, new_placeholder_key
from .._privdirs import ensure_dir
from .._sandboxes import Execution, Sandbox, spec_from_policy
from .._sandboxes._host import chown_tree
from .._sandboxes._spec import SANDBOX_GID, SANDBOX_UID
from .._sandboxes._wsmount import mount_workspace_async, unmount_all
from .._tools import find_claude
from ._claude import GATEWAY_PORT, MANAGED_SETTINGS, OPT_DIR, claude_env, first_message, write_shared_files
from ._context import RunnerContext
from ._hookpolicy import rules_for
from ._hooksocket import HOOK_SOCKET, HookServer

if TYPE_CHECKING:
    from ._warm import WarmAgent

logger = logging.getLogger(__name__)

FORWARDER_READY_TIMEOUT_S = 20.0


def forwarder_source() -> bytes:
    return resources.files("sandbox").joinpath("_forwarder.py").read_bytes()


def shared_folders(shared_dir: Path) -> tuple[Path, Path]:
    """The runner-wide folders mounted at /opt/taskbus and /etc/claude-code."""
    return shared_dir / "opt", shared_dir / "etc"


def prepare_shared(shared_dir: Path) -> None:
    """Write the hook, the forwarder and the managed settings once per runner."""
    write_shared_files(*shared_folders(shared_dir), forwarder_source())


class AgentSandbox:
    def __init__(
        self,
        context: RunnerContext,
        policy: Policy,
        *,
        on_call: Callable[[CallRecord], Awaitable[None]],
        on_security: Callable[[SecurityNotice], Awaitable[None]],
        on_log: Callable[[str], Awaitable[None]],
        on_started: Callable[[Sandbox], Awaitable[None]] | None = None,
        fill_workspace: Callable[[Path], None] | None = None,
        home_files: dict[str, bytes] | None = None,
        catalog_files: dict[str, bytes] | None = None,
        warm: WarmAgent | None = None,
    ) -> None:
        self.settings = context.settings
        self.policy = policy
        self.backend = context.backend
        self.upstream = context.upstream
        self.runner_id = context.runner_id
        self.run_dir = context.run_dir(policy.task_id)
        self.sock_dir = context.sock_dir(policy.task_id)
        self.shared_dir = context.shared_dir
        self.workspace = self.run_dir / "workspace"
        self._fill_workspace = fill_workspace
        self.home_files = dict(home_files or {})
        """Written into the sandbox home before anything runs."""
        self.catalog_files = dict(catalog_files or {})
        """The task's catalog agents and skills (paths relative to ~/.claude), installed
        read-only at ~/.claude/agents and ~/.claude/skills (``SandboxSpec.catalog_files``)."""
        self._on_call, self._on_security, self._on_log, self._on_started = on_call, on_security, on_log, on_started
        self.placeholder = new_placeholder_key()
        self.secrets = (self.placeholder, context.settings.upstream_api_key)
        self.sandbox: Sandbox | None = None
        self.gateway: ModelGateway | None = None
        self.hook: HookServer | None = None
        self.claude_binary = ""
        self.warm = warm
        """The warm agent this task took (its Claude Code is running: ``send_task``), or None."""
        self._stack = contextlib.AsyncExitStack()

    @property
    def box(self) -> Sandbox:
        """The sandbox, once entered (asking before is a bug)."""
        if self.sandbox is None:
            raise RuntimeError("the agent sandbox is not entered yet")
        return self.sandbox

    @property
    def env(self) -> dict[str, str]:
        return claude_env(self.placeholder)

    async def _serve_sockets(self) -> None:
        """The task's model gateway and hook socket in its socket folder (cold or warm)."""
        self.gateway = await self._stack.enter_async_context(
            ModelGateway(
                self.settings,
                self.policy,
                self.sock_dir / "model.sock",
                self.placeholder,
                upstream=self.upstream,
                on_call=self._on_call,
                on_security=self._on_security,
            )
        )
        self.hook = await self._stack.enter_async_context(
            HookServer(self.sock_dir / HOOK_SOCKET, rules_for(self.policy), task_id=self.policy.task_id, on_security=self._on_security)
        )

    async def __aenter__(self) -> AgentSandbox:
        try:
            await self._enter()
        except BaseException:
            await asyncio.shield(self._close())
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self._close())

    async def stop(self) -> None:
        """Destroy the sandbox and close the gateway; the workspace stays (at ``self.workspace``)."""
        try:
            await self._stack.aclose()
        finally:
            self.workspace = self.run_dir / "workspace"

    async def _close(self) -> None:
        try:
            await self.stop()
        finally:
            await asyncio.to_thread(_remove, self.run_dir, self.sock_dir)

    async def _enter(self) -> None:
        if self.warm is not None:
            await self._adopt(self.warm)
            return
        if self.policy.network != "model-api":
            # 'none': no route out at all, not even to the model; Claude Code cannot run
            raise PolicyDenied(
                f"task {self.policy.task_id} has network {self.policy.network!r}: an agent needs the model API",
                permission="network:model-api",
            )
        opt_dir, etc_dir = shared_folders(self.shared_dir)
        await mount_workspace_async(self.workspace, self.policy.disk_mb, SANDBOX_UID, SANDBOX_GID)
        if self._fill_workspace is not None:
            await asyncio.to_thread(self._fill_workspace, self.workspace)
        ensure_dir(self.sock_dir, 0o755)  # under the runner's private socket root
        claude = find_claude(self.settings)
        self.claude_binary = f"/opt/claude/{claude.name}"
        await self._serve_sockets()
        try:
            spec = spec_from_policy(
                self.policy,
                runner_id=self.runner_id,
                workspace=str(self.workspace),
                ro_mounts=[
                    (str(claude.parent), "/opt/claude"),
                    (str(opt_dir), OPT_DIR),
                    (str(etc_dir), str(Path(MANAGED_SETTINGS).parent)),
                ],
                socket_dir=str(self.sock_dir),
                home_files=self.home_files,
                catalog_files=self.catalog_files,
            )
        except PolicyDenied as exc:  # the project root changed since dispatch signed it
            await self._on_security(SecurityNotice("project_root_changed", exc.message, "critical"))
            raise
        self.sandbox = await self._stack.enter_async_context(await self.backend.create(spec))
        self.workspace = self.sandbox.workspace  # a pooled Docker sandbox has its own folder
        if self._on_started is not None:
            await self._on_started(self.sandbox)
        await start_forwarder(self.sandbox, self._stack, self._on_log, name=self.policy.task_id)

    async def _adopt(self, warm: WarmAgent) -> None:
        """Take over a warm agent: the task's clock, files, gateway and hook (its rules)."""
        self._stack.push_async_callback(warm.kill)  # runs last if nothing else was entered
        self.run_dir, self.sock_dir, self.workspace = warm.run_dir, warm.sock_dir, warm.workspace
        self.placeholder = warm.placeholder
        self.secrets = (self.placeholder, self.settings.upstream_api_key)
        self.claude_binary = warm.claude_binary
        assert warm.sandbox is not None
        warm.sandbox.restart_clock(float(self.policy.timeout_s))
        if self._fill_workspace is not None:
            # nothing in the sandbox has run anything of a task yet: its Claude Code has
            # had no message, so no process in it can race these writes
            await asyncio.to_thread(self._fill_workspace, self.workspace)
            await asyncio.to_thread(chown_tree, self.workspace, SANDBOX_UID, SANDBOX_GID)
        await self._serve_sockets()
        self._stack.push_async_callback(warm.kill)  # the sandbox goes before its gateway and hook
        self.sandbox = warm.sandbox
        if self._on_started is not None:
            await self._on_started(self.sandbox)

    def send_task(self, description: str) -> Execution:
        """The warm agent's Claude Code, now given the task's model and description."""
        assert self.warm is not None
        return self.warm.send(first_message(description, model=self.policy.model, started_model=self.warm.policy.model))


async def start_forwarder(
    sandbox: Sandbox, stack: contextlib.AsyncExitStack, on_log: Callable[[str], Awaitable[None]], *, name: str
) -> None:
    """Start the loopback forwarder inside ``sandbox``, wait until it listens, and keep
    reading its output until ``stack`` closes."""
    forwarder = await sandbox.exec(
        ["python3", "-I", f"{OPT_DIR}/forwarder.py", "--listen", f"127.0.0.1:{GATEWAY_PORT}", "--socket", "/run/taskbus/model.sock"],
        cwd="/tmp",
    )
    await _wait_ready(forwarder, on_log)
    drain = asyncio.create_task(_drain(forwarder, on_log), name=f"forwarder-log-{name}")

    async def stop_drain() -> None:
        drain.cancel()
        await asyncio.gather(drain, return_exceptions=True)

    stack.push_async_callback(stop_drain)


async def _wait_ready(forwarder: Any, on_log: Callable[[str], Awaitable[None]]) -> None:
    try:
        async with asyncio.timeout(FORWARDER_READY_TIMEOUT_S):
            async for stream, line in forwarder:
                if stream == "stdout" and line.startswith("ready"):
                    return
                await on_log(f"forwarder: {line[:500]}")
    except TimeoutError:
        pass
    raise SandboxError("the model forwarder inside the sandbox did not start (is python3 in the sandbox image?)")


async def _drain(forwarder: Any, on_log: Callable[[str], Awaitable[None]]) -> None:
    """Keep reading the forwarder's output so it never blocks on a full pipe."""
    async for _stream, line in forwarder:
        await on_log(f"forwarder: {line[:500]}")


def _remove(run_dir: Path, *paths: Path) -> None:
    unmount_all(run_dir / "workspace")
    for path in (run_dir, *paths):
        shutil.rmtree(path, ignore_errors=True)
