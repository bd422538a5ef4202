"""The console's routes under ``/console``: login, tasks (live list and live task page with
cancel and artifact download), runners, spend, audit search, keys and profiles.

Every page but the login needs a session; every POST needs the session's CSRF token and,
when the browser sends one, a same-origin ``Origin``. Login, logout, refusals, cancels
and artifact downloads are published as audit notices (``console_*``, ``task_cancelled``).
"""

from __future__ import annotations

import logging

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Mount, Route

from bus import (
    AuthError,
)

from ._admin_pages import AdminPages
from ._html import CSS, JS, esc, page
from ._render import html_response
from ._sessions import COOKIE
from ._task_pages import TaskPages

logger = logging.getLogger(__name__)


class Console(TaskPages, AdminPages):
    """One per server; ``mount()`` is the Starlette Mount at ``/console``."""

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
        return html_response(page("Log in to the taskbus console", body), status)

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
