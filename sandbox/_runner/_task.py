"""Running one ``run_task`` job: input files, the agent sandbox, Claude Code, artifacts.

Order: input files are written into the fresh workspace before the sandbox exists (on a
warm agent: before its Claude Code gets its first message, so before anything of the
task runs in it);
after Claude Code ends the sandbox is destroyed (every process in it gone) and only
then are artifacts collected, within what is left of the task's wall clock (past it
the task ends ``timeout``); on a warm agent whose processes are all killed and checked
gone (through its cgroup) the collection comes first and the sandbox is removed after
``finished`` (``later``). Everything the task made on the host (workspace, gateway
socket, policy files) is removed at the end, whatever happened; the sandbox is
destroyed by ``AgentSandbox``, also on cancel and timeout.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bus import Job, Log, Security, Started, TaskRequest, Usage, redact

from .._gateway import CallRecord, SecurityNotice
from .._sandboxes import Sandbox
from ._agent import AgentSandbox
from ._catalog import catalog_files
from ._claude import ClaudeOutcome, claude_argv, translate
from ._context import RunnerContext
from ._events import EventBudget, TaskEvents, emit_model_call
from ._warm import WarmAgent
from ._workspace import FileState, snapshot, store_artifacts, write_inputs

logger = logging.getLogger(__name__)

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


class EventSink:
    """The callbacks an AgentSandbox needs, publishing to one task's events."""

    def __init__(self, events: TaskEvents, runner_id: str, backend: str) -> None:
        self.events = events
        self.runner_id = runner_id
        self.backend = backend
        self.usage = Usage()
        self.log_lines = 0
        self.warm = False

    async def on_call(self, record: CallRecord) -> None:
        self.usage = self.usage + record.usage
        await emit_model_call(self.events, record)

    async def on_security(self, notice: SecurityNotice) -> None:
        await self.events.emit(Security, kind=notice.kind, detail=notice.detail, severity=notice.severity)

    async def on_log(self, line: str, stream: str = "runner") -> None:
        if self.log_lines < MAX_LOG_LINES:
            self.log_lines += 1
            await self.events.emit(Log, line=line, stream=stream)

    async def on_started(self, sandbox: Sandbox) -> None:
        await self.events.emit(Started, runner_id=self.runner_id, backend=self.backend, sandbox_id=sandbox.id, warm=self.warm)


class TaskRun:
    """One task on one runner. ``await TaskRun(...).run()`` returns the outcome; the
    caller publishes ``finished``. Cancellation propagates (the caller decides why)."""

    def __init__(
        self,
        context: RunnerContext,
        job: Job,
        events: TaskEvents,
        *,
        warm: WarmAgent | None = None,
        later: Callable[[Coroutine[Any, Any, None]], None] | None = None,
    ) -> None:
        self.settings = context.settings
        self.job = job
        self._later = later
        """Runs a coroutine after the task's outcome is reported (a warm agent's sandbox
        removal, once every process of it was killed and checked gone)."""
        self.policy = job.policy
        if not isinstance(job.request, TaskRequest):
            raise TypeError(f"a run_task job carries a TaskRequest, not {type(job.request).__name__}")
        self.request = job.request
        self.events = events
        self.sink = EventSink(events, context.runner_id, context.backend.name)
        self.sink.warm = warm is not None
        self.outcome = ClaudeOutcome(
            allowed_tools=tuple(self.policy.tools),
            allowed_agents=tuple(self.policy.agents),
            allowed_skills=tuple(self.policy.skills),
            catalog={f"{r.kind}:{r.name}": r.sha256 for r in self.policy.catalog},
        )
        self.originals: dict[str, bytes] = {}
        self.before: dict[str, FileState] = {}
        self.agent = AgentSandbox(
            context,
            self.policy,
            on_call=self.sink.on_call,
            on_security=self.sink.on_security,
            on_log=self.sink.on_log,
            on_started=self.sink.on_started,
            fill_workspace=self._write_inputs,
            warm=warm,
        )

    def _write_inputs(self, workspace: Path) -> None:
        self.originals = write_inputs(workspace, self.request.files, max_bytes=self.settings.artifact_max_bytes)
        self.before = snapshot(self.originals)

    async def run(self) -> TaskOutcome:
        started = time.monotonic()
        if self.policy.catalog:
            self.agent.catalog_files.update(await catalog_files(self.events.bus, self.policy))
            await self.sink.on_log(
                "installed from the catalog: " + ", ".join(f"{r.kind} {r.name} ({r.sha256[:12]})" for r in self.policy.catalog)
            )
        agent = self.agent
        await agent.__aenter__()
        later = False
        try:
            exit_code = await self._run_claude(agent)
            timed_out = agent.box.timed_out
            deadline = asyncio.get_running_loop().time() + agent.box.remaining_s
            if self._later is not None and agent.warm is not None and await agent.box.stop_all():
                # every process of the sandbox is gone (checked through its cgroup):
                # nothing can race the collection; the sandbox is removed after `finished`
                later = True
            else:
                await agent.stop()  # nothing of the sandbox runs any more: nothing can race the collection
            diff = None
            if not timed_out:
                try:
                    async with asyncio.timeout_at(deadline):
                        diff = await store_artifacts(
                            self.events.bus,
                            self.settings,
                            self.job.task_id,
                            agent.workspace,
                            self.before,
                            self.originals,
                            self.events.emit,
                        )
                except TimeoutError:
                    await self.sink.on_log(f"collecting artifacts ran past the task's {self.policy.timeout_s}s time limit; stopped")
                    timed_out = True
        except BaseException:
            later = False
            raise
        finally:
            if later and self._later is not None:
                self._later(agent.__aexit__(None, None, None))
            else:
                await agent.__aexit__(None, None, None)
        assert agent.gateway is not None
        logger.info(
            "task %s: claude exited %s after %.1fs (%d turns, $%.6f)",
            self.job.task_id,
            exit_code,
            time.monotonic() - started,
            self.outcome.turns,
            agent.gateway.spent_usd,
        )
        return self._outcome(exit_code, timed_out, agent, diff)

    async def _run_claude(self, agent: AgentSandbox) -> int:
        if agent.warm is not None:
            proc = agent.send_task(self.request.description)
        else:
            proc = await agent.box.exec(
                claude_argv(agent.claude_binary, self.policy), env=agent.env, stdin=self.request.description.encode()
            )
        budget = EventBudget(self.settings.task_max_events, self.settings.task_max_event_bytes)
        async for stream, line in proc:
            if stream == "stdout":
                for event_type, fields in translate(line, self.outcome, agent.secrets):
                    admitted = budget.admit(fields)
                    if admitted is not None:
                        await self.events.emit(event_type, **admitted)
                    elif budget.dropped == 1:  # once; the rest is read and dropped
                        logger.warning("task %s: %s", self.job.task_id, budget.notice())
                        await self.events.emit(Security, kind="event_limit", severity="warning", detail=budget.notice())
                if agent.warm is not None and self.outcome.seen_result:
                    # the result is all a warm agent owes; its Claude Code's own shutdown
                    # (100-200 ms) is not waited for: the sandbox is destroyed next anyway
                    return 0
            elif line.strip():
                await self.sink.on_log(redact(line[:2000], agent.secrets), "stderr")
        return await proc.wait()

    def _outcome(self, exit_code: int, timed_out: bool, agent: AgentSandbox, diff: str | None) -> TaskOutcome:
        gateway = agent.gateway
        assert gateway is not None

        def ended(status: str, result: str, reason: str | None = None) -> TaskOutcome:
            return TaskOutcome(
                status=status,
                result=result,
                reason=reason,
                usage=self.sink.usage,
                cost_usd=gateway.spent_usd,
                turns=self.outcome.turns,
                diff=diff,
                model=self.policy.model,
            )

        if timed_out:
            return ended("timeout", f"the task ran out of its {self.policy.timeout_s}s time limit", "wall_clock")
        if gateway.exhausted:
            return ended(
                "budget_exceeded",
                f"the task reached its cost cap of ${self.policy.max_cost_usd:.4f}; raise max_cost_usd to let it go further",
                "cost_cap",
            )
        if not self.outcome.seen_result:
            return ended("failed", f"Claude Code exited with status {exit_code} without a result (see the log events)", "agent_crashed")
        if self.outcome.is_error:
            # Claude Code says subtype "success" on some errors (a refused model request):
            # a failed task never carries reason "success"
            subtype = self.outcome.subtype
            reason = subtype if subtype and subtype != "success" else "agent_error"
            text = self.outcome.result or f"Claude Code ended with {reason}"
            return ended("failed", redact(text, agent.secrets), reason)
        return ended("succeeded", self.outcome.result)
