"""The console's operator pages: runners, spend, audit search, keys and profiles (read only)."""

from __future__ import annotations

import json
import logging
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from bus import (
    TaskbusError,
)

from .._dispatch import FINAL
from ._base import ConsoleBase
from ._data import audit_head, audit_search, audit_verify
from ._html import Raw, badge, bar_chart, esc, link, table, url
from ._render import SUMMARY_CHARS, limit_text, window_text
from ._sessions import Session

logger = logging.getLogger(__name__)


class AdminPages(ConsoleBase):
    """Runners, spend, audit search, keys and profiles."""

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
                    window_text(b.day.used_usd, b.day.limit_usd),
                    window_text(b.month.used_usd, b.month.limit_usd),
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
                    limit_text(p.budget_day_usd),
                    limit_text(p.budget_month_usd),
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
