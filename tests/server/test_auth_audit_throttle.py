"""A flood of bad keys costs a bounded number of audit rows, and every failure is still
counted: 500 bad-key requests over MCP HTTP and 500 over NATS submit, against the real
server (run_server), the real nats-server and the real audit writer (SQLite)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx2
import msgspec
import nats
from test_http import http_server

from audit import run_audit
from audit._alerts import AlertRules
from audit._writer import Notable
from bus import AuditNotice, AuthError, Settings, SubmitRejected, decode_reply
from server._auth_audit import AuthAuditThrottle

FLOOD = 500


@contextlib.asynccontextmanager
async def audit_writer(settings: Settings, db: Path) -> AsyncIterator[None]:
    ready, stop = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_audit(settings, db_path=db, stop=stop, ready=ready))
    try:
        async with asyncio.timeout(20):
            await asyncio.wait({task, asyncio.create_task(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        yield
    finally:
        stop.set()
        async with asyncio.timeout(20):
            await task


def _auth_rows(db: Path) -> list[dict]:
    if not db.exists():
        return []
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    try:
        bodies = [r[0] for r in conn.execute("SELECT body FROM audit WHERE kind = 'auth_failure' ORDER BY id")]
    except sqlite3.OperationalError:
        return []
    finally:
        conn.close()
    return [json.loads(b) for b in bodies]


async def _wait_counted(db: Path, total: int) -> list[dict]:
    deadline = time.monotonic() + 30
    while sum(((rows := _auth_rows(db)) and [r["detail"]["count"] for r in rows]) or [0]) < total:
        assert time.monotonic() < deadline, f"audit rows count {sum(r['detail']['count'] for r in rows)} failures, not {total}"
        await asyncio.sleep(0.05)
    return rows


async def test_a_flood_of_bad_keys_costs_a_few_audit_rows_that_count_every_failure(settings: Settings, tmp_path: Path) -> None:
    settings = msgspec.structs.replace(settings, auth_audit_window_s=3600.0)
    db = tmp_path / "audit.db"
    bad = "tb_" + "n" * 43
    async with audit_writer(settings, db):
        async with http_server(settings) as url:
            headers = {"Accept": "application/json, text/event-stream", "Authorization": f"Bearer {bad}"}
            async with httpx2.AsyncClient() as http:
                for _ in range(FLOOD):
                    assert (await http.post(url, json={}, headers=headers)).status_code == 401
            nc = await nats.connect(settings.nats_url)
            try:
                subject = f"{settings.subject_prefix}.submit.task"
                for _ in range(FLOOD):
                    reply = decode_reply(
                        (await nc.request(subject, b'{"description": "x"}', headers={"Authorization": f"Bearer {bad}"}, timeout=10)).data
                    )
                    assert isinstance(reply, SubmitRejected) and reply.code == "unauthorized"
            finally:
                await nc.close()
            # the first failure of each door is audited at once
            first = await _wait_counted(db, 2)
            assert sorted(r["detail"]["via"] for r in first) == ["mcp-http", "nats"]
        # the server stopped: the windows' counts are written
        rows = await _wait_counted(db, 2 * FLOOD)
    assert len(rows) == 4
    by_door = {}
    for row in rows:
        assert row["actor"] == "anonymous" and row["code"] == "unauthorized"
        assert row["detail"]["message"] == "unknown API key"
        by_door.setdefault(row["detail"]["via"], []).append(row["detail"]["count"])
    assert by_door == {"mcp-http": [1, FLOOD - 1], "nats": [1, FLOOD - 1]}


async def test_a_closed_window_is_flushed_without_another_failure_and_a_new_one_audits_at_once() -> None:
    published: list[AuditNotice] = []

    async def publish(notice: AuditNotice) -> None:
        published.append(notice)

    async with AuthAuditThrottle(publish, window_s=0.2) as throttle:
        for _ in range(10):
            await throttle.failed(AuthError("unknown API key"), via="nats")
        await throttle.failed(AuthError("no API key given"), via="nats")
        assert [n.detail["count"] for n in published] == [1, 1]
        async with asyncio.timeout(20):
            while len(published) < 3:
                await asyncio.sleep(0.02)
        assert published[2].detail == {"message": "unknown API key", "via": "nats", "count": 9, "aggregated": True, "window_s": 0.2}
        await throttle.failed(AuthError("unknown API key"), via="nats")
        assert published[-1].detail["count"] == 1 and "aggregated" not in published[-1].detail
    assert len(published) == 4  # nothing left to flush: each window had no further failures


def test_an_aggregated_row_counts_as_its_failures_for_the_alert() -> None:
    rules = AlertRules(auth_threshold=5, auth_window_s=60)
    row = Notable(
        row=1,
        type="notice",
        kind="auth_failure",
        task_id=None,
        key_id="anonymous",
        ts_us=1_000_000,
        severity=None,
        detail="unauthorized",
        count=499,
    )
    alerts = rules.evaluate([row])
    assert [a["kind"] for a in alerts] == ["auth_failures"]
