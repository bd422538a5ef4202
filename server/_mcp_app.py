"""The MCP server: tools ``complete``, ``run_task``, ``get_task``, ``cancel_task``,
``list_tasks`` and resources for a task's events and artifacts.

Who is calling: on Streamable HTTP the bearer key checked by ``_http`` (the verified
``AccessToken`` carries the key's display prefix and profile); on stdio and in-process
the key the server was started with (``TASKBUS_API_KEY``), checked on every call so a
revoked key stops working at once. Every tool works only on the caller's own tasks.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Annotated, Any, Literal

import mcp_types as types
import msgspec
from mcp.server import MCPServer
from mcp.server.auth.middleware.auth_context import get_access_token
from mcp.server.mcpserver import Context
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError
from mcp.server.mcpserver.resources.templates import ResourceSecurity
from pydantic import BaseModel, ConfigDict, Field

from bus import (
    CompleteRequest,
    Event,
    Finished,
    InvalidInput,
    Message,
    NotFound,
    TaskbusError,
    TaskRequest,
    taskbus_version,
)
from bus import encode as encode_message

from ._dispatch import Caller, Dispatcher
from ._dispatch_events import TaskWatch
from ._mcp_args import StrictMCPServer
from ._mcp_results import (
    INLINE_MAX_BYTES,
    artifact_entries,
    error_result,
    events_uri,
    finished_error,
    finished_summary,
    json_result,
    progress_message,
    task_result,
)
from ._mcp_tasks import register_task_tools

logger = logging.getLogger(__name__)

KEEPALIVE_S = 5.0
STREAM_PROGRESS_S = 0.5
INSTRUCTIONS = (
    "taskbus runs Claude for you under a permission profile, with a budget. Use `complete` for a "
    "single model answer (no tools, no files) and `run_task` for work that needs an agent with tools "
    "in a sandbox (reading/writing files, running commands). Long tasks: call run_task with wait=false, "
    "then poll get_task. Errors start with a [code] and say what to do."
)


class ChatTurn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    role: Literal["user", "assistant"]
    content: str


class InputFileArg(BaseModel):
    model_config = ConfigDict(extra="forbid")

    path: Annotated[str, Field(description="Relative path in the task's workspace, e.g. 'src/app.py'. No absolute paths or '..'.")]
    content: Annotated[str, Field(description="The file's content (UTF-8 text, or base64 with encoding='base64').")]
    encoding: Literal["utf-8", "base64"] = "utf-8"


class Identity:
    """Resolves the caller of a tool call (bearer token on HTTP, the server's key otherwise)."""

    def __init__(self, dispatcher: Dispatcher, api_key: str | None) -> None:
        self.dispatcher = dispatcher
        self.api_key = api_key

    async def caller(self) -> Caller:
        token = get_access_token()
        if token is not None and token.subject:
            return Caller(token.client_id, token.subject)
        return await self.dispatcher.authenticate(self.api_key, via="mcp-stdio")

    async def refused(self, tool: str, exc: TaskbusError) -> None:
        """Audit a tool call refused before it ran (unknown tool or arguments)."""
        try:
            actor = (await self.caller()).key_id
        except TaskbusError:
            actor = "anonymous"
        await self.dispatcher.audit(exc, actor=actor, detail={"via": "mcp", "tool": tool[:100]})


async def to_request(identity: Identity, tool: str, cls: type, fields: dict[str, Any]) -> Any:
    """The wire request from validated tool arguments; a rule only the wire type knows is an
    audited InvalidInput."""
    try:
        return msgspec.convert({k: v for k, v in fields.items() if v is not None}, cls)
    except msgspec.ValidationError as exc:
        error = InvalidInput(f"invalid arguments: {exc}; fix that argument and call again")
        await identity.refused(tool, error)
        raise error from None


async def cancel_quietly(dispatcher: Dispatcher, caller: Caller, task_id: str, reason: str) -> None:
    try:
        async with asyncio.timeout(5):
            await dispatcher.cancel(caller, task_id, reason=reason)
    except Exception as exc:
        logger.warning("cancel of %s after the client went away failed: %s", task_id, exc)


async def follow_with_progress(
    ctx: Context,
    dispatcher: Dispatcher,
    caller: Caller,
    watch: TaskWatch,
    *,
    keepalive_s: float,
    message_for: Callable[[Event | None], str | None],
) -> Finished:
    """Follow a task to its end, reporting MCP progress with ``message_for(event)`` (None:
    nothing to report; the event is None on a keepalive tick). A client that goes away
    (the call is cancelled) cancels the task too."""
    progress = 0
    try:
        async for event in watch.stream(keepalive_s=keepalive_s):
            message = message_for(event)
            if message is not None:
                progress += 1
                await ctx.report_progress(progress, None, message)
    except asyncio.CancelledError:
        await asyncio.shield(cancel_quietly(dispatcher, caller, watch.task_id, "MCP client cancelled the call"))
        raise
    finished = watch.finished
    assert finished is not None
    return finished


def create_mcp_server(
    dispatcher: Dispatcher,
    *,
    api_key: str | None = None,
    keepalive_s: float = KEEPALIVE_S,
    **server_kwargs: Any,
) -> MCPServer:
    """The taskbus MCP server on top of ``dispatcher`` (extra kwargs go to ``MCPServer``)."""
    mcp = StrictMCPServer("taskbus", version=taskbus_version(), instructions=INSTRUCTIONS, **server_kwargs)
    identity = Identity(dispatcher, api_key)
    mcp.on_refused = identity.refused

    @mcp.tool(
        title="Model completion",
        description=(
            "Ask Claude for one answer: give `prompt` (or `messages` for a conversation), optionally a "
            "`system` prompt. model='auto' (default) picks a model by prompt size, code and multi-step "
            "signals and `effort`, within your profile and budget; the result names the model and why. "
            "Returns text, model, routing_reason, usage and cost_usd. For work needing tools or files, use run_task."
        ),
        annotations=types.ToolAnnotations(read_only_hint=True, open_world_hint=False),
    )
    async def complete(
        ctx: Context,
        prompt: Annotated[str | None, Field(description="The user prompt. Give this or `messages`.")] = None,
        messages: Annotated[
            list[ChatTurn] | None, Field(description="Conversation turns, oldest first; the last must be role 'user'. Instead of `prompt`.")
        ] = None,
        system: Annotated[str | None, Field(description="System prompt.")] = None,
        model: Annotated[str, Field(description="'auto' or a model your profile allows, e.g. 'claude-haiku-4-5'.")] = "auto",
        max_tokens: Annotated[int | None, Field(ge=1, le=128000, description="Most output tokens.")] = None,
        temperature: Annotated[float | None, Field(ge=0, le=1, description="0 for deterministic answers (cacheable).")] = None,
        effort: Annotated[
            Literal["low", "medium", "high"] | None, Field(description="Hint for model='auto': low = fast and cheap, high = most capable.")
        ] = None,
        cache: Annotated[bool, Field(description="Reuse an identical earlier answer (only with temperature=0).")] = False,
        max_cost_usd: Annotated[
            float | None, Field(ge=0, description="Cost cap for this call in USD (within your profile's per-task limit).")
        ] = None,
        idempotency_key: Annotated[
            str | None,
            Field(
                min_length=1,
                max_length=256,
                description="Any unique string; calling again with the same key (for 24 h by default) returns the first call's task instead of starting another. Use it to retry safely.",
            ),
        ] = None,
    ) -> types.CallToolResult:
        started = time.perf_counter()
        try:
            caller = await identity.caller()
            request: CompleteRequest = await to_request(
                identity,
                "complete",
                CompleteRequest,
                {
                    "prompt": prompt,
                    "messages": [m.model_dump() for m in messages] if messages else None,
                    "system": system,
                    "model": model,
                    "max_tokens": max_tokens,
                    "temperature": temperature,
                    "effort": effort,
                    "cache": cache,
                    "max_cost_usd": max_cost_usd,
                },
            )
            submission = await dispatcher.submit(caller, request, via="mcp", idempotency_key=idempotency_key)
        except TaskbusError as exc:
            return error_result(exc)
        chars, last_report = 0, time.perf_counter()

        def streaming(event: Event | None) -> str | None:
            nonlocal chars, last_report
            now = time.perf_counter()
            if isinstance(event, Message) and event.delta:
                chars += len(event.text)
                if now - last_report < STREAM_PROGRESS_S:
                    return None
                message = f"streaming: {chars} characters so far ({now - started:.0f}s)"
            elif event is None:
                message = f"waiting for the model ({now - started:.0f}s)"
            else:
                return None
            last_report = now
            return message

        finished = await follow_with_progress(
            ctx, dispatcher, caller, dispatcher.live(submission.task_id), keepalive_s=keepalive_s, message_for=streaming
        )
        doc = {
            "task_id": submission.task_id,
            "text": finished.result,
            "model": finished.model or submission.model,
            "routing_reason": submission.routing_reason,
            "cached": submission.cached,
            **finished_summary(finished),
        }
        if finished.status != "succeeded":
            return finished_error(doc, finished)
        await dispatcher.cache_written(submission.task_id)
        return json_result(doc, finished.result)

    @mcp.tool(
        title="Run an agentic task",
        description=(
            "Run Claude Code as an agent in a fresh sandbox on a task described in plain words; it can use "
            "the tools your profile allows (e.g. Read, Write, Edit, Bash) on a private workspace seeded with "
            "`files` (and a read-only `project` directory if your profile grants one). Streams progress while "
            "it works; returns status, result text, usage, cost_usd, duration and the files it produced (as "
            "resource links; small text files inline). Set wait=false to get the task_id at once and poll "
            "get_task (for tasks longer than your client's call timeout). Limits: timeout_s and max_cost_usd "
            "within your profile's limits."
        ),
        annotations=types.ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False),
    )
    async def run_task(
        ctx: Context,
        description: Annotated[str, Field(min_length=1, description="What the agent should do, with the acceptance criteria.")],
        allow_tools: Annotated[
            list[str] | None,
            Field(description="Restrict the agent to these tools (default: all your profile grants), e.g. ['Read', 'Write']."),
        ] = None,
        allow_agents: Annotated[list[str] | None, Field(description="Sub-agents it may use (default: those your profile grants).")] = None,
        allow_skills: Annotated[list[str] | None, Field(description="Skills it may use (default: those your profile grants).")] = None,
        files: Annotated[list[InputFileArg] | None, Field(description="Files to place in the workspace before it starts.")] = None,
        project: Annotated[
            str | None, Field(description="Absolute path of a project directory your profile allows, mounted read-only.")
        ] = None,
        timeout_s: Annotated[int | None, Field(ge=1, description="Wall-clock limit in seconds.")] = None,
        max_cost_usd: Annotated[float | None, Field(ge=0, description="Cost cap in USD; the task stops when reached.")] = None,
        max_turns: Annotated[int | None, Field(ge=1, le=1000, description="Most agent turns.")] = None,
        model: Annotated[str, Field(description="'auto' or a model your profile allows.")] = "auto",
        effort: Annotated[Literal["low", "medium", "high"] | None, Field(description="Hint for model='auto'.")] = None,
        wait: Annotated[bool, Field(description="true: wait for the result, with progress. false: return the task_id at once.")] = True,
        idempotency_key: Annotated[
            str | None,
            Field(
                min_length=1,
                max_length=256,
                description="Any unique string; calling again with the same key (for 24 h by default) returns the first call's task instead of starting another. Use it to retry safely.",
            ),
        ] = None,
    ) -> types.CallToolResult:
        started = time.perf_counter()
        try:
            caller = await identity.caller()
            request: TaskRequest = await to_request(
                identity,
                "run_task",
                TaskRequest,
                {
                    "description": description,
                    "allow_tools": allow_tools,
                    "allow_agents": allow_agents,
                    "allow_skills": allow_skills,
                    "files": [f.model_dump() for f in files] if files else None,
                    "project": project,
                    "timeout_s": timeout_s,
                    "max_cost_usd": max_cost_usd,
                    "max_turns": max_turns,
                    "model": model,
                    "effort": effort,
                },
            )
            submission = await dispatcher.submit(caller, request, via="mcp", idempotency_key=idempotency_key)
        except TaskbusError as exc:
            return error_result(exc)
        base = {
            "task_id": submission.task_id,
            "model": submission.model,
            "routing_reason": submission.routing_reason,
            "events_uri": events_uri(submission.task_id),
        }
        if not wait:
            return json_result(
                {**base, "status": "queued", "next": "poll get_task with this task_id"},
                f"Task {submission.task_id} queued on {submission.model}. Poll get_task('{submission.task_id}') "
                "until its status is final; cancel_task stops it.",
            )
        watch = dispatcher.live(submission.task_id)

        def working(event: Event | None) -> str | None:
            elapsed = time.perf_counter() - started
            if event is None:
                return f"working… [${watch.cost_so_far:.4f}, {elapsed:.0f}s]"
            return progress_message(event, cost=watch.cost_so_far, elapsed=elapsed)

        finished = await follow_with_progress(ctx, dispatcher, caller, watch, keepalive_s=keepalive_s, message_for=working)
        artifacts = watch.artifacts
        inline = await _inline_texts(dispatcher, caller, submission.task_id, artifacts)
        structured = {
            **base,
            **finished_summary(finished),
            "model": finished.model or submission.model,
            "artifacts": artifact_entries(submission.task_id, artifacts),
        }
        return task_result(structured, finished, artifacts, inline)

    register_task_tools(mcp, dispatcher, identity)
    mcp.close_tool_schemas()

    @mcp.resource(
        "taskbus://catalog",
        name="catalog",
        description=(
            "The agents and skills your key may ask for in run_task (allow_agents, allow_skills), with "
            "their descriptions: Claude Code's built-in agents and the ones the operator registered."
        ),
        mime_type="application/json",
    )
    async def catalog() -> str:
        try:
            caller = await identity.caller()
            offered = await dispatcher.offered_catalog(caller)
        except TaskbusError as exc:
            raise ResourceError(f"[{exc.code}] {exc.describe()}") from None
        return json.dumps(offered, indent=2)

    @mcp.resource(
        "taskbus://tasks/{task_id}/events",
        name="task_events",
        description="Every event of one of your tasks so far, as JSON lines (accepted, started, tool calls, messages, cost, finished).",
        mime_type="application/x-ndjson",
    )
    async def task_events(task_id: str, ctx: Context) -> str:
        try:
            caller = await identity.caller()
            watch = await dispatcher.watch(caller, task_id)
        except NotFound as exc:
            raise ResourceNotFoundError(exc.describe()) from None
        except TaskbusError as exc:
            raise ResourceError(f"[{exc.code}] {exc.describe()}") from None
        return "\n".join(encode_message(e).decode() for e in watch.events) + "\n"

    @mcp.resource(
        "taskbus://tasks/{task_id}/artifacts/{+path}",
        name="task_artifact",
        description="A file one of your tasks produced (path relative to its workspace).",
        security=ResourceSecurity(),
    )
    async def task_artifact(task_id: str, path: str, ctx: Context) -> str | bytes:
        try:
            caller = await identity.caller()
            data = await dispatcher.read_artifact(caller, task_id, path)
        except NotFound as exc:
            raise ResourceNotFoundError(exc.describe()) from None
        except TaskbusError as exc:
            raise ResourceError(f"[{exc.code}] {exc.describe()}") from None
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            return data

    return mcp


async def _inline_texts(dispatcher: Dispatcher, caller: Caller, task_id: str, artifacts: list[Any]) -> dict[str, str]:
    inline: dict[str, str] = {}
    for artifact in artifacts:
        if artifact.size > INLINE_MAX_BYTES or len(inline) >= 10:
            continue
        try:
            inline[artifact.path] = (await dispatcher.read_artifact(caller, task_id, artifact.path)).decode("utf-8")
        except (TaskbusError, UnicodeDecodeError):
            continue
    return inline
