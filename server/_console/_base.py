"""What every console page uses: the dispatcher, sessions, the CSRF and origin checks, the
page frame, audit notices, and a task's owner."""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from bus import (
    AuditNotice,
    NotFound,
    TaskbusError,
)
from profiles import TaskRecord

from .._dispatch import FINAL, Caller, Dispatcher
from ._data import LiveBoard, audit_path
from ._html import page
from ._render import html_response
from ._sessions import COOKIE, Session, Sessions

logger = logging.getLogger(__name__)

STATUSES = ("accepted", "running", *sorted(FINAL))
KEEPALIVE_S = 15.0


class ConsoleBase:
    """State and helpers shared by the console's page groups."""

    def __init__(self, dispatcher: Dispatcher) -> None:
        self.d = dispatcher
        self.sessions = Sessions()
        self.board = LiveBoard(dispatcher.bus)
        self.audit_db = audit_path(dispatcher.settings.data_path)

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
            return None, html_response(
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
        return html_response(page(title, body, active=active, who=who, csrf=session.csrf, script=script))

    async def _owned(self, task_id: str) -> tuple[TaskRecord, Caller]:
        """The task and its owner (the console reads and cancels as an operator)."""
        try:
            record = await self.d.store.get_task(task_id)
        except (NotFound, TaskbusError):
            record = None
        if record is None:
            raise NotFound(f"no task {task_id}", task_id=task_id)
        return record, Caller(record.key_id, record.profile)
