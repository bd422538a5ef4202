"""The ``claude-cli`` completion provider: ``claude -p`` with no tools, in a sandbox.

It answers ``complete`` jobs through the same gateway (metering, hard cost cap,
credential injection) as agentic tasks. Text deltas come from the CLI's partial
messages (``--include-partial-messages``). ``max_tokens`` and ``temperature`` are not
CLI options, so they are not applied (the cost cap still is).
"""

from __future__ import annotations

import logging
import time

import msgspec

from bus import BudgetExceeded, CompleteRequest, ModelError, Policy, Usage, redact

from .._gateway import Callback, CallRecord, SecurityNotice, notify
from .._providers import CompletionResult
from ._agent import AgentSandbox
from ._claude import claude_argv
from ._context import RunnerContext
from ._streamjson import ResultLine, StreamEventLine, parse_line

logger = logging.getLogger(__name__)


def prompt_text(request: CompleteRequest) -> str:
    parts = [f"{m.role}: {m.content}" for m in request.messages or []]
    if request.prompt:
        parts.append(request.prompt if not parts else f"user: {request.prompt}")
    return "\n\n".join(parts)


class ClaudeCliProvider:
    name = "claude-cli"

    def __init__(self, context: RunnerContext) -> None:
        self.context = context

    async def complete(
        self,
        request: CompleteRequest,
        policy: Policy,
        *,
        on_delta: Callback[str] | None = None,
        on_call: Callback[CallRecord] | None = None,
    ) -> CompletionResult:
        started = time.monotonic()
        no_tools = msgspec.structs.replace(policy, tools=[], agents=[], skills=[])
        usage = Usage()

        async def count(record: CallRecord) -> None:
            nonlocal usage
            usage = usage + record.usage
            await notify(on_call, record)

        async def security(notice: SecurityNotice) -> None:
            logger.warning("completion %s: gateway refused something: %s", policy.task_id, notice.detail)

        async def log(line: str) -> None:
            logger.debug("completion %s: %s", policy.task_id, line)

        agent = AgentSandbox(
            self.context,
            no_tools,
            on_call=count,
            on_security=security,
            on_log=log,
        )
        text: list[str] = []
        result, is_error = "", False
        async with agent:
            argv = [*claude_argv(agent.claude_binary, no_tools, tools=[]), "--include-partial-messages"]
            if request.system:
                argv.append("--system-prompt=" + request.system)
            proc = await agent.box.exec(argv, env=agent.env, stdin=prompt_text(request).encode())
            async for stream, line in proc:
                if stream != "stdout":
                    continue
                parsed = parse_line(line)
                if isinstance(parsed, StreamEventLine):
                    delta = parsed.event.delta if parsed.event is not None else None
                    if delta is not None and delta.type == "text_delta" and delta.text:
                        text.append(delta.text)
                        await notify(on_delta, redact(delta.text, agent.secrets))
                elif isinstance(parsed, ResultLine):
                    result, is_error = parsed.result or "", bool(parsed.is_error)
            await proc.wait()
            gateway = agent.gateway
            assert gateway is not None
            if gateway.exhausted:
                raise BudgetExceeded(f"the completion reached its cost cap of ${policy.max_cost_usd:.4f}")
            if is_error or not (result or text):
                raise ModelError(f"claude -p failed: {redact(result, agent.secrets)[:500] or 'no result'}")
            return CompletionResult(
                text=redact(result or "".join(text), agent.secrets),
                model=policy.model,
                usage=usage,
                cost_usd=gateway.spent_usd,
                stop_reason="end_turn",
                duration_ms=int((time.monotonic() - started) * 1000),
            )
