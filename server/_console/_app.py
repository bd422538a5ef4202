"""The console's routes under ``/console``: login, tasks (live list and live task page with
cancel and artifact download), runners, spend, audit search, keys and profiles.

Every page but the login needs a session; every POST needs the session's CSRF token and,
when the browser sends one, a same-origin ``Origin``. Login, logout, refusals, cancels
and artifact downloads are published as audit notices (``console_*``, ``task_cancelled``).
"""

from __future__ import annotations

import json
import logging
import re
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlsplit

import msgspec
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, RedirectResponse, Response, StreamingResponse
from starlette.routing import Mount, Route

from bus import (
    Accepted,
    Artifact,
    AuditNotice,
    AuthError,
    Event,
    Finished,
    Message,
    ModelCall,
    NotFound,
    Security,
    Started,
    TaskbusError,
    ToolCall,
    ToolResult,
)
from profiles import TaskRecord

from .._dispatch import FINAL, Caller, Dispatcher
from ._data import LiveBoard, audit_head, audit_path, audit_search, audit_verify
from ._html import CSS, JS, SECURITY_HEADERS, Raw, badge, bar_chart, esc, link, page, post_button, table, url
from ._sessions import COOKIE, Session, Sessions

logger = logging.getLogger(__name__)

STATUSES = ("accepted", "running", *sorted(FINAL))
SUMMARY_CHARS = 4000
KEEPALIVE_S = 15.0


def _html(body: str, status: int = 200) -> HTMLResponse:
    return HTMLResponse(body, status_code=status, headers=SECURITY_HEADERS)


def _duration(record: TaskRecord) -> str:
    end = record.finished_at or (None if record.status in FINAL else datetime.now(UTC))
    if end is None:
        return ""
    return f"{(end - record.created_at).total_seconds():.1f} s"


def _cost(value: float | None) -> str:
    return "" if value is None else f"${value:.4f}"


def _summary(event: Event) -> str:
    """What one event says, as plain text (escaped by whoever renders it)."""
    if isinstance(event, Message):
        text = event.text
    elif isinstance(event, ToolCall):
        text = f"{event.name} {json.dumps(event.input, ensure_ascii=False)}"
    elif isinstance(event, ToolResult):
        text = ("error: " if event.is_error else "") + event.output
    elif isinstance(event, ModelCall):
        u = event.usage
        text = (
            f"{event.model}: in {u.input_tokens}, out {u.output_tokens}, cache {u.cache_creation_input_tokens}/"
            f"{u.cache_read_input_tokens} tokens, ${event.cost_usd:.6f} (total ${event.total_cost_usd:.6f})"
        )
    elif isinstance(event, Security):
        text = f"[{event.severity}] {event.kind}: {event.detail}"
    elif isinstance(event, Started):
        text = f"runner {event.runner_id} ({event.backend}), sandbox {event.sandbox_id}"
    elif isinstance(event, Accepted):
        text = f"{event.kind} for {event.key_id} ({event.profile}) on {event.model} — {event.routing_reason}"
    elif isinstance(event, Artifact):
        text = f"{event.path} ({event.size} bytes, {event.change})"
    elif isinstance(event, Finished):
        text = (
            f"{event.status}{' (' + event.reason + ')' if event.reason else ''}, ${event.cost_usd:.6f}, "
            f"{event.duration_ms} ms, {event.turns} turns"
        )
    else:
        fields = msgspec.to_builtins(event)
        for name in ("task_id", "seq", "ts", "type"):
            fields.pop(name, None)
        text = json.dumps(fields, ensure_ascii=False)
    return text[:SUMMARY_CHARS]


def _artifact_href(task_id: str, path: str) -> str:
    return url(f"/console/tasks/{task_id}/artifacts/{path}")


class Console:
    """One per server; ``mount()`` is the Starlette Mount at ``/console``."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher
        self.sessions = Sessions()
        self.board = LiveBoard(dispatcher.bus)
        self.audit_db = audit_path(dispatcher.settings.data_path)

    def mount(self) -> Mount:
        r = Route
        return Mount(
            "/console",
            routes=[
                r("/", self.home),
                r("/login", self.login_form, methods=["GET"]),
                r("/login", self.login, methods=["POST"]),
                r("/logout", self.logout, methods=["POST"]),
                r("/static/console.css", self.css),
                r("/static/console.js", self.js),
                r("/tasks", self.tasks),
                r("/api/tasks", self.tasks_json),
                r("/tasks/{task_id}", self.task),
                r("/tasks/{task_id}/stream", self.task_stream),
                r("/tasks/{task_id}/cancel", self.cancel, methods=["POST"]),
                r("/tasks/{task_id}/artifacts/{path:path}", self.artifact),
                r("/runners", self.runners),
                r("/spend", self.spend),
                r("/audit", self.audit),
                r("/keys", self.keys),
                r("/profiles", self.profiles),
            ],
        )

    # ------------------------------------------------------------------ sessions and audit

    def _session(self, request: Request) -> Session | None:
        return self.sessions.get(request.cookies.get(COOKIE))

    async def _notice(self, kind: str, actor: str, *, task_id: str | None = None, **detail: Any) -> None:
        await self.d.notice(AuditNotice(kind=kind, actor=actor, task_id=task_id, detail={"via": "console", **detail}))

    def _same_origin(self, request: Request) -> bool:
        origin = request.headers.get("origin")
        if origin is None:  # an old browser or a script: the CSRF token and SameSite=Strict still hold
            return True
        # the host only: behind a TLS proxy the scheme the server sees is not the browser's
        return urlsplit(origin).netloc == request.headers.get("host", "")

    async def _post_session(self, request: Request) -> tuple[Session | None, Response | None]:
        """The session of a state-changing request whose CSRF token and origin check out."""
        session = self._session(request)
        form = await request.form()
        token = form.get("csrf")
        if session is None or not self._same_origin(request) or not session.csrf_ok(str(token) if token else None):
            actor = session.key_id if session else "anonymous"
            await self._notice(
                "console_csrf_refused",
                actor,
                path=request.url.path,
                reason="no session" if session is None else "bad or missing CSRF token or origin",
            )
            return None, _html(
                page("Refused", '<p class="error">This request is missing a valid CSRF token; reload the page and try again.</p>'), 403
            )
        return session, None

    def _need(self, request: Request) -> Session | Response:
        session = self._session(request)
        if session is None:
            return RedirectResponse("/console/login", status_code=303)
        return session

    def _page(self, session: Session, title: str, body: str, active: str, *, script: bool = False) -> HTMLResponse:
        who = f"{session.key_id} ({session.profile})"
        return _html(page(title, body, active=active, who=who, csrf=session.csrf, script=script))

    # ------------------------------------------------------------------ login

    async def home(self, request: Request) -> Response:
        target = "/console/tasks" if self._session(request) else "/console/login"
        return RedirectResponse(target, status_code=303)

    async def login_form(self, request: Request, error: str = "", status: int = 200) -> Response:
        message = f'<p class="error" id="login-error">{esc(error)}</p>' if error else ""
        body = (
            f'<div class="card login">{message}<form method="post" action="/console/login">'
            '<p><label>API key<br><input type="password" name="key" autocomplete="off" size="48" autofocus>'
            '</label></p><button type="submit">Log in</button></form>'
            '<p class="muted">A key whose profile has <code>console = true</code> (admin has it).</p></div>'
        )
        return _html(page("Log in to the taskbus console", body), status)

    async def login(self, request: Request) -> Response:
        if not self._same_origin(request):
            await self._notice("console_csrf_refused", "anonymous", path="/console/login", reason="cross-origin login")
            return await self.login_form(request, "Cross-origin login refused.", 403)
        form = await request.form()
        key = str(form.get("key") or "").strip()
        try:
            caller = await self.d.authenticate(key, via="console")  # audits a bad key
        except AuthError:
            return await self.login_form(request, "That key is not valid (unknown, revoked or expired).", 401)
        profile = await self.d.store.get_profile(caller.profile)
        if not getattr(profile, "console", False):
            await self._notice("console_refused", caller.key_id, profile=caller.profile, reason="the profile does not grant the console")
            return await self.login_form(
                request, f"Profile {caller.profile!r} does not grant the console (profile field console = true).", 403
            )
        sid, _session = self.sessions.create(caller.key_id, caller.profile)
        await self.board.start()  # start hearing runner heartbeats and alerts
        await self._notice("console_login", caller.key_id, profile=caller.profile)
        response = RedirectResponse("/console/tasks", status_code=303)
        response.set_cookie(COOKIE, sid, httponly=True, samesite="strict", path="/console", secure=request.url.scheme == "https")
        return response

    async def logout(self, request: Request) -> Response:
        session, refused = await self._post_session(request)
        if refused is not None:
            return refused
        assert session is not None
        self.sessions.drop(request.cookies.get(COOKIE))
        await self._notice("console_logout", session.key_id)
        response = RedirectResponse("/console/login", status_code=303)
        response.delete_cookie(COOKIE, path="/console", httponly=True, samesite="strict")
        return response

    async def css(self, _request: Request) -> Response:
        return Response(CSS, media_type="text/css", headers={"X-Content-Type-Options": "nosniff"})

    async def js(self, _request: Request) -> Response:
        return Response(JS, media_type="text/javascript", headers={"X-Content-Type-Options": "nosniff"})

    # ------------------------------------------------------------------ tasks

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
            _duration(r),
            _cost(r.cost_usd if r.cost_usd is not None else None),
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

    async def _owned(self, task_id: str) -> tuple[TaskRecord, Caller]:
        """The task and its owner (the console reads and cancels as an operator)."""
        try:
            record = await self.d.store.get_task(task_id)
        except (NotFound, TaskbusError):
            record = None
        if record is None:
            raise NotFound(f"no task {task_id}", task_id=task_id)
        return record, Caller(record.key_id, record.profile)

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
        rows = [(e.seq, e.ts.strftime("%H:%M:%S.%f")[:-3], _etype(e), Raw(f"<pre>{esc(_summary(e))}</pre>")) for e in events]
        arts = [
            (Raw(f'<a href="{esc(_artifact_href(task_id, a.path))}" download>{esc(a.path)}</a>'), a.size, a.sha256) for a in watch.artifacts
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
                ("cost", esc(_cost(finished.cost_usd if finished else record.cost_usd))),
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
                    "type": _etype(event),
                    "cells": [event.seq, event.ts.strftime("%H:%M:%S.%f")[:-3], _etype(event), {"pre": _summary(event)}],
                }
                if isinstance(event, Artifact):
                    data["artifact"] = {
                        "path": event.path,
                        "size": event.size,
                        "sha256": event.sha256,
                        "href": _artifact_href(task_id, event.path),
                    }
                if isinstance(event, Finished):
                    data["status"], data["result"] = event.status, event.result
                yield f"event: event\ndata: {_json_text(data)}\n\n"
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
            return _html(page("Not found", '<p class="error">No such artifact.</p>'), 404)
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

    # ------------------------------------------------------------------ runners, spend, audit, keys, profiles

    async def runners(self, request: Request) -> Response:
        session = self._need(request)
        if not isinstance(session, Session):
            return session
        await self.board.start()
        now = datetime.now(UTC).timestamp()
        horizon = 3 * self.d.settings.heartbeat_s
        rows = []
        for rid, (beat, seen) in sorted(self.board.runners.items()):
            state = "live" if now - seen <= horizon else "silent"
            rows.append(
                (
                    rid,
                    badge("ok" if state == "live" else "failed"),
                    beat.backend,
                    f"{len(beat.running)} / {beat.slots}",
                    str(beat.warm),
                    ", ".join(beat.kinds),
                    beat.host,
                    beat.version,
                    f"{now - seen:.0f} s ago",
                    ", ".join(beat.running),
                )
            )
        body = (
            f'<p class="muted">Heartbeats every {self.d.settings.heartbeat_s:g} s; this page lists runners heard '
            "since the first console login (reload to refresh).</p>"
            + table(
                (
                    "runner",
                    "state",
                    "backend",
                    "slots in use",
                    "warm sandboxes",
                    "kinds",
                    "host",
                    "version",
                    "last heartbeat",
                    "running tasks",
                ),
                rows,
                empty="no heartbeat heard yet (reload in a few seconds)",
            )
        )
        return self._page(session, "Runners", body, "runners")

    async def spend(self, request: Request) -> Response:
        session = self._need(request)
        if not isinstance(session, Session):
            return session
        keys = await self.d.store.list_keys()
        now = datetime.now(UTC)
        rows: list[tuple[str, ...]] = []
        by_profile: defaultdict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for key in keys:
            if key.state(now) not in ("active", "rotated"):
                continue
            b = await self.d.store.remaining_budget(key.prefix)
            by_profile[key.profile][0] += b.day.used_usd
            by_profile[key.profile][1] += b.month.used_usd
            rows.append(
                (
                    key.prefix,
                    key.name or "",
                    key.profile,
                    _window(b.day.used_usd, b.day.limit_usd),
                    _window(b.month.used_usd, b.month.limit_usd),
                    f"{b.running} / {b.max_concurrent}",
                )
            )
        tasks = await self.d.store.list_tasks(None, limit=5000)
        days = [(now - timedelta(days=i)).date() for i in range(13, -1, -1)]
        spend_by_day: dict[Any, float] = defaultdict(float)
        outcomes: dict[Any, int] = defaultdict(int)
        failed: dict[Any, int] = defaultdict(int)
        for t in tasks:
            day = (t.finished_at or t.created_at).date()
            spend_by_day[day] += t.cost_usd or 0.0
            if t.status in FINAL:
                outcomes[day] += 1
                failed[day] += t.status != "succeeded"
        spend_series = [(d.strftime("%m-%d"), spend_by_day[d]) for d in days]
        outcome_series = [(d.strftime("%m-%d"), float(outcomes[d])) for d in days]
        fail_series = [(d.strftime("%m-%d"), float(failed[d])) for d in days]
        profile_rows = [(p, f"${d:.4f}", f"${m:.4f}") for p, (d, m) in sorted(by_profile.items())]
        body = (
            "<h2>Spend per day (USD, last 14 days)</h2>"
            + bar_chart(spend_series, unit=" USD")
            + "<h2>Finished tasks per day</h2>"
            + bar_chart(outcome_series)
            + "<h2>Not succeeded per day</h2>"
            + bar_chart(fail_series)
            + "<h2>By profile (used today / this month, incl. open reservations)</h2>"
            + table(("profile", "today", "this month"), profile_rows)
            + "<h2>By key (used / budget)</h2>"
            + table(("key", "name", "profile", "today", "this month", "running"), rows)
        )
        return self._page(session, "Spend", body, "spend")

    async def audit(self, request: Request) -> Response:
        session = self._need(request)
        if not isinstance(session, Session):
            return session
        q = request.query_params
        fields = {k: q.get(k, "")[:200] for k in ("text", "type", "key", "task", "since")}
        form = (
            '<form class="filters" method="get" action="/console/audit">'
            + "".join(
                f'<input name="{n}" placeholder="{p}" value="{esc(fields[n])}">'
                for n, p in (
                    ("text", "words"),
                    ("type", "type or kind"),
                    ("key", "key prefix"),
                    ("task", "task id"),
                    ("since", "since (1h, 7d, ISO)"),
                )
            )
            + '<button type="submit">Search</button> '
            + f'<a href="{esc(url("/console/audit", verify="1", **fields))}">verify the chain</a></form>'
        )
        await self.board.start()
        alerts = "<h2>Alerts fired since the first login</h2>" + table(
            ("time", "kind", "alert"),
            [
                (datetime.fromtimestamp(ts, UTC).strftime("%H:%M:%S"), kind, Raw(f"<pre>{esc(text)}</pre>"))
                for ts, kind, text in self.board.alerts
            ],
            body_id="alerts",
            empty="none",
        )
        if not self.audit_db.exists():
            return self._page(
                session,
                "Audit",
                form + '<p class="muted">No audit database yet (is the audit writer running? <code>taskbus audit run</code>)</p>' + alerts,
                "audit",
            )
        chain = ""
        try:
            if q.get("verify"):
                result = await audit_verify(self.audit_db)
                if result.ok:
                    chain = (
                        f'<p id="chain">{badge("ok")} chain verified: {esc(result.rows)} rows, head '
                        f"<code>{esc(result.head_hash)}</code></p>"
                    )
                else:
                    chain = f'<p id="chain">{badge("broken")} {esc(result.problem.message if result.problem else "")}</p>'
            else:
                head = await audit_head(self.audit_db)
                chain = (
                    (
                        f'<p id="chain" class="muted">latest row {esc(head[0])}, head <code>{esc(head[1])}</code> '
                        "(not verified on this view)</p>"
                    )
                    if head
                    else '<p id="chain" class="muted">empty log</p>'
                )
            rows = await audit_search(
                self.audit_db, text=fields["text"], type_=fields["type"], key=fields["key"], task=fields["task"], since=fields["since"]
            )
        except (TaskbusError, TimeoutError) as exc:
            message = exc.message if isinstance(exc, TaskbusError) else "the audit database is busy; try again"
            return self._page(session, "Audit", form + f'<p class="error">{esc(message)}</p>', "audit")
        table_rows = [
            (
                r["id"],
                r["ts"][:23],
                link(f"/console/tasks/{r['task_id']}", r["task_id"]) if r["task_id"] else "",
                r["seq"] or "",
                r["type"],
                r["kind"] or "",
                r["key_id"] or "",
                Raw(f"<pre>{esc(json.dumps(r['event'], ensure_ascii=False)[:SUMMARY_CHARS])}</pre>"),
            )
            for r in reversed(rows)
        ]
        body = (
            form
            + chain
            + alerts
            + "<h2>Rows (newest first)</h2>"
            + table(
                ("row", "time (UTC)", "task", "seq", "type", "kind", "key", "event"),
                table_rows,
                body_id="audit-rows",
                empty="no rows match",
            )
        )
        return self._page(session, "Audit", body, "audit")

    async def keys(self, request: Request) -> Response:
        session = self._need(request)
        if not isinstance(session, Session):
            return session
        now = datetime.now(UTC)
        rows = [
            (
                k.prefix,
                k.name or "",
                k.profile,
                badge(k.state(now)),
                k.created_at.isoformat(timespec="seconds"),
                k.expires_at.isoformat(timespec="seconds") if k.expires_at else "",
            )
            for k in await self.d.store.list_keys()
        ]
        body = (
            '<p class="muted">Read only; create, revoke and rotate with <code>taskbus keys</code>. '
            "Keys are stored hashed: only their display prefix exists here.</p>"
            + table(("key", "name", "profile", "state", "created", "expires"), rows)
        )
        return self._page(session, "Keys", body, "keys")

    async def profiles(self, request: Request) -> Response:
        session = self._need(request)
        if not isinstance(session, Session):
            return session
        rows = []
        for p in await self.d.store.list_profiles():
            rows.append(
                (
                    p.name,
                    p.description,
                    ", ".join(p.kinds),
                    ", ".join(p.models),
                    ", ".join(p.tools),
                    p.max_concurrent,
                    f"${p.max_cost_per_task_usd:g}",
                    _limit(p.budget_day_usd),
                    _limit(p.budget_month_usd),
                    p.network,
                    p.fs_access,
                    "yes" if getattr(p, "console", False) else "",
                )
            )
        body = '<p class="muted">Read only; change with <code>taskbus profiles</code>.</p>' + table(
            ("profile", "description", "kinds", "models", "tools", "concurrent", "per task", "day", "month", "network", "files", "console"),
            rows,
        )
        return self._page(session, "Profiles", body, "profiles")


def _json_text(data: Any) -> str:
    """JSON with no raw ``<``, ``>`` or ``&`` (the browser parses it; it is never markup)."""
    text = json.dumps(data, ensure_ascii=True)
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def _etype(event: Event) -> str:
    return str(msgspec.to_builtins(event).get("type", type(event).__name__.lower()))


def _window(used: float, limit: float | None) -> str:
    return f"${used:.4f}" + (f" / ${limit:g}" if limit is not None else " (no budget)")


def _limit(value: float | None) -> str:
    return "" if value is None else f"${value:g}"
