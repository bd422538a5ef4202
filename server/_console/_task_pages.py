"""The console's task pages: the live list (and its JSON for polling), one task's live
page with its event stream, cancel and artifact download."""

from __future__ import annotations

import logging
import re
from pathlib import PurePosixPath
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse, Response, StreamingResponse

from bus import (
    Artifact,
    Finished,
    NotFound,
    Started,
)
from profiles import TaskRecord

from .._dispatch import FINAL
from ._base import KEEPALIVE_S, STATUSES, ConsoleBase
from ._html import Raw, badge, esc, link, page, post_button, table, url
from ._render import artifact_href, cost_text, duration_text, event_summary, event_type, html_response, json_text
from ._sessions import Session

logger = logging.getLogger(__name__)


class TaskPages(ConsoleBase):
    """The task list and one task's page."""

    def _runner_of(self, task_id: str) -> str:
        watch = self.d.followers.watches.get(task_id)
        for event in watch.events[:3] if watch else []:
            if isinstance(event, Started):
                return event.runner_id
        return ""

    async def _list(self, request: Request) -> list[TaskRecord]:
        q = request.query_params
        status = q.get("status") or None
        if status not in (None, *STATUSES):
            status = None
        rows = await self.d.store.list_tasks(q.get("key") or None, status=status, limit=500)
        for name in ("profile", "kind"):
            if q.get(name):
                rows = [r for r in rows if getattr(r, name) == q.get(name)]
        return rows[:200]

    def _task_cells(self, r: TaskRecord) -> list[Any]:
        return [
            r.task_id,
            r.status,
            r.kind,
            r.key_id,
            r.profile,
            r.model or "",
            self._runner_of(r.task_id),
            duration_text(r),
            cost_text(r.cost_usd if r.cost_usd is not None else None),
            r.created_at.strftime("%Y-%m-%d %H:%M:%S"),
        ]

    async def tasks(self, request: Request) -> Response:
        session = self._need(request)
        if not isinstance(session, Session):
            return session
        q = request.query_params
        rows = await self._list(request)
        opts = "".join(f"<option{' selected' if q.get('status') == s else ''}>{esc(s)}</option>" for s in STATUSES)
        filters = (
            '<form class="filters" method="get" action="/console/tasks">'
            f'<select name="status"><option value="">any status</option>{opts}</select>'
            f'<input name="key" placeholder="key prefix" value="{esc(q.get("key", ""))}">'
            f'<input name="profile" placeholder="profile" value="{esc(q.get("profile", ""))}">'
            f'<input name="kind" placeholder="kind" value="{esc(q.get("kind", ""))}">'
            '<button type="submit">Filter</button></form>'
        )
        body_rows = []
        for r in rows:
            cells = self._task_cells(r)
            cells[0] = link(f"/console/tasks/{r.task_id}", r.task_id)
            cells[1] = badge(r.status)
            body_rows.append(cells)
        poll = url("/console/api/tasks", **{k: q.get(k) for k in ("status", "key", "profile", "kind")})
        body = (
            filters
            + f'<div id="live-tasks" data-poll="{esc(poll)}"></div>'
            + table(
                ("task", "status", "kind", "key", "profile", "model", "runner", "duration", "cost", "created"),
                body_rows,
                body_id="tasks",
                empty="no tasks match",
            )
        )
        return self._page(session, "Tasks", body, "tasks", script=True)

    async def tasks_json(self, request: Request) -> Response:
        if self._session(request) is None:
            return JSONResponse({"error": "log in again"}, status_code=401)
        out = []
        for r in await self._list(request):
            c = self._task_cells(r)
            out.append(
                {
                    "task_id": r.task_id,
                    "href": f"/console/tasks/{r.task_id}",
                    "status": c[1],
                    "kind": c[2],
                    "key_id": c[3],
                    "profile": c[4],
                    "model": c[5],
                    "runner": c[6],
                    "duration": c[7],
                    "cost": c[8],
                    "created": c[9],
                }
            )
        return JSONResponse({"tasks": out}, headers={"Cache-Control": "no-store"})

    async def task(self, request: Request) -> Response:
        session = self._need(request)
        if not isinstance(session, Session):
            return session
        task_id = request.path_params["task_id"]
        try:
            record, owner = await self._owned(task_id)
            watch = await self.d.watch(owner, task_id)
        except NotFound:
            return self._page(session, "No such task", f'<p class="error">No task {esc(task_id)}.</p>', "tasks")
        events = list(watch.events)
        rows = [(e.seq, e.ts.strftime("%H:%M:%S.%f")[:-3], event_type(e), Raw(f"<pre>{esc(event_summary(e))}</pre>")) for e in events]
        arts = [
            (Raw(f'<a href="{esc(artifact_href(task_id, a.path))}" download>{esc(a.path)}</a>'), a.size, a.sha256) for a in watch.artifacts
        ]
        finished = watch.finished
        status = finished.status if finished else record.status
        result = finished.result if finished else (record.result_summary or "")
        cancel = ""
        if status not in FINAL:
            cancel = post_button(f"/console/tasks/{task_id}/cancel", "Cancel task", session.csrf, danger=True, ident="cancel")
        facts = "".join(
            f"<div>{esc(k)}</div><div>{cell}</div>"
            for k, cell in (
                ("status", f'<span id="task-status">{badge(status)}</span>'),
                ("kind", esc(record.kind)),
                ("key", esc(record.key_id)),
                ("profile", esc(record.profile)),
                ("model", esc(record.model or "")),
                ("runner", esc(self._runner_of(task_id))),
                ("cost", esc(cost_text(finished.cost_usd if finished else record.cost_usd))),
                ("created", esc(record.created_at.isoformat(timespec="seconds"))),
            )
        )
        stream = f"/console/tasks/{task_id}/stream"
        body = (
            f'<div class="card"><div class="kv">{facts}</div><p>{cancel}</p></div>'
            f'<div id="live-task" data-stream="{esc(stream)}" data-after="{len(events)}"></div>'
            f'<h2>Result</h2><div class="card"><pre id="result">{esc(result)}</pre></div>'
            "<h2>Artifacts</h2>"
            + table(("path", "bytes", "sha256"), arts, body_id="artifacts", empty="none")
            + "<h2>Events</h2>"
            + table(("seq", "time", "type", "what"), rows, body_id="events", empty="no events yet")
        )
        return self._page(session, f"Task {task_id}", body, "tasks", script=True)

    async def task_stream(self, request: Request) -> Response:
        session = self._session(request)
        if session is None:
            return JSONResponse({"error": "log in again"}, status_code=401)
        task_id = request.path_params["task_id"]
        try:
            _record, owner = await self._owned(task_id)
            watch = await self.d.watch(owner, task_id)
        except NotFound:
            return JSONResponse({"error": "no such task"}, status_code=404)
        try:
            after = max(0, int(request.query_params.get("after", "0")))
        except ValueError:
            after = 0

        async def frames() -> Any:
            async for event in watch.stream(start=after, keepalive_s=KEEPALIVE_S):
                if event is None:
                    yield ": keepalive\n\n"
                    continue
                data: dict[str, Any] = {
                    "type": event_type(event),
                    "cells": [event.seq, event.ts.strftime("%H:%M:%S.%f")[:-3], event_type(event), {"pre": event_summary(event)}],
                }
                if isinstance(event, Artifact):
                    data["artifact"] = {
                        "path": event.path,
                        "size": event.size,
                        "sha256": event.sha256,
                        "href": artifact_href(task_id, event.path),
                    }
                if isinstance(event, Finished):
                    data["status"], data["result"] = event.status, event.result
                yield f"event: event\ndata: {json_text(data)}\n\n"
            yield "event: end\ndata: {}\n\n"

        return StreamingResponse(frames(), media_type="text/event-stream", headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})

    async def cancel(self, request: Request) -> Response:
        session, refused = await self._post_session(request)
        if refused is not None:
            return refused
        assert session is not None
        task_id = request.path_params["task_id"]
        try:
            _record, owner = await self._owned(task_id)
            await self.d.cancel(owner, task_id, reason=f"cancelled from the console by {session.key_id}", actor=session.key_id)
        except NotFound:
            return self._page(session, "No such task", f'<p class="error">No task {esc(task_id)}.</p>', "tasks")
        return RedirectResponse(f"/console/tasks/{task_id}", status_code=303)

    async def artifact(self, request: Request) -> Response:
        session = self._need(request)
        if not isinstance(session, Session):
            return session
        task_id, path = request.path_params["task_id"], request.path_params["path"]
        try:
            _record, owner = await self._owned(task_id)
            data = await self.d.read_artifact(owner, task_id, path)
        except NotFound:
            return html_response(page("Not found", '<p class="error">No such artifact.</p>'), 404)
        await self._notice("console_artifact", session.key_id, task_id=task_id, path=path[:500])
        name = re.sub(r"[^A-Za-z0-9._-]", "_", PurePosixPath(path).name)[:200] or "artifact"
        # never rendered by the browser: a download, not a page (the agent wrote it)
        return Response(
            data,
            media_type="application/octet-stream",
            headers={
                "Content-Disposition": f'attachment; filename="{name}"',
                "X-Content-Type-Options": "nosniff",
                "Content-Security-Policy": "default-src 'none'; sandbox",
                "Cache-Control": "no-store",
            },
        )
