"""MCP tools over existing tasks: ``get_task``, ``cancel_task``, ``list_tasks``."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any, Literal

import mcp_types as types
from mcp.server import MCPServer
from pydantic import Field

from bus import FINISHED_STATUSES, TaskbusError

from ._dispatch import Dispatcher
from ._mcp_results import (
    artifact_entries,
    builtins,
    error_result,
    events_uri,
    finished_summary,
    json_result,
)

if TYPE_CHECKING:
    from ._mcp_app import Identity

Status = Literal["accepted", "running", "succeeded", "failed", "timeout", "cancelled", "budget_exceeded", "denied"]


def record_doc(record: Any) -> dict[str, Any]:
    doc = builtins(record)
    doc["events_uri"] = events_uri(doc["task_id"])
    return doc


def register_task_tools(mcp: MCPServer, dispatcher: Dispatcher, identity: Identity) -> None:
    @mcp.tool(
        title="Task status and result",
        description=(
            "Status of one of your tasks (from run_task or complete), and when it is done its result text, "
            "usage, cost_usd, duration and produced files (resource URIs). Statuses: accepted, running, then "
            "one final status: succeeded, failed, timeout, cancelled, budget_exceeded, denied."
        ),
        annotations=types.ToolAnnotations(read_only_hint=True),
    )
    async def get_task(
        task_id: Annotated[str, Field(description="The task_id that run_task or list_tasks returned.")],
    ) -> types.CallToolResult:
        try:
            caller = await identity.caller()
            record = await dispatcher.task_record(caller, task_id)
            watch = await dispatcher.watch(caller, task_id)
        except TaskbusError as exc:
            return error_result(exc)
        doc = record_doc(record)
        doc["cost_so_far_usd"] = watch.cost_so_far
        doc["events"] = watch.count
        if watch.finished is not None:
            doc.update(finished_summary(watch.finished))
            doc["artifacts"] = artifact_entries(task_id, watch.artifacts)
            text = f"Task {task_id} {watch.finished.status}: {watch.finished.result}"
        elif record.status in FINISHED_STATUSES:  # its events aged out of the stream
            text = f"Task {task_id} {record.status}: {record.result_summary or ''} (events no longer stored)"
        else:
            if watch.started:
                doc["status"] = "running"
            text = f"Task {task_id} is {doc['status']} ({watch.count} events, ${watch.cost_so_far:.4f} so far); poll again."
        return json_result(doc, text + "\n" + _json(doc))

    @mcp.tool(
        title="Cancel a task",
        description="Stop one of your running or queued tasks. Its sandbox is destroyed and it ends 'cancelled'.",
        annotations=types.ToolAnnotations(destructive_hint=True, idempotent_hint=True),
    )
    async def cancel_task(
        task_id: Annotated[str, Field(description="The task_id to stop.")],
    ) -> types.CallToolResult:
        try:
            caller = await identity.caller()
            status = await dispatcher.cancel(caller, task_id, reason="cancelled with cancel_task")
        except TaskbusError as exc:
            return error_result(exc)
        text = (
            f"Task {task_id} is already {status}."
            if status != "cancelling"
            else f"Cancel sent to task {task_id}; get_task shows 'cancelled' once it stopped."
        )
        return json_result({"task_id": task_id, "status": status}, text)

    @mcp.tool(
        title="List your tasks",
        description="Your most recent tasks, newest first, optionally only those with one status.",
        annotations=types.ToolAnnotations(read_only_hint=True),
    )
    async def list_tasks(
        status: Annotated[Status | None, Field(description="Only tasks with this status.")] = None,
        limit: Annotated[int, Field(ge=1, le=500, description="How many to return.")] = 20,
    ) -> types.CallToolResult:
        try:
            caller = await identity.caller()
            records = await dispatcher.list_tasks(caller, status=status, limit=limit)
        except TaskbusError as exc:
            return error_result(exc)
        tasks = [record_doc(r) for r in records]
        lines = [f"{t['task_id']}  {t['kind']:<8} {t['status']:<15} ${t.get('cost_usd') or 0:.4f}" for t in tasks]
        return json_result({"tasks": tasks}, "\n".join(lines) or "No tasks.")


def _json(doc: dict[str, Any]) -> str:
    return json.dumps(doc, indent=2, default=str)
