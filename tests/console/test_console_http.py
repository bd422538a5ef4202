"""The console over plain HTTP against the real stack: who may log in, the session cookie,
CSRF refusals (audited), hostile task output rendered as text, no key ever rendered."""

from __future__ import annotations

import asyncio
import re
from typing import Any

import httpx2
import msgspec
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from stack_kit import e2e_ready, http_stack

from bus import AuditNotice, Bus, Settings, Subjects, decode_notice
from profiles import Store
from server._console import console_enabled

HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(1)><b>bold</b> & "quotes"'


async def notices_of(settings: Settings) -> tuple[Bus, list[AuditNotice]]:
    bus = await Bus.open(settings.nats_url, Subjects(settings.subject_prefix), name="test-notices")
    seen: list[AuditNotice] = []

    async def on(msg: Any) -> None:
        seen.append(decode_notice(msg.data))

    await bus.nc.subscribe(bus.subjects.audit_all(), cb=on)
    await bus.nc.flush()
    return bus, seen


async def wait_for(seen: list[AuditNotice], kind: str, path: str = "") -> AuditNotice:
    async with asyncio.timeout(20):
        while True:
            for n in seen:
                if n.kind == kind and str(n.detail.get("path", "")).endswith(path):
                    return n
            await asyncio.sleep(0.05)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF token on the page"
    return match.group(1)


def test_the_console_is_off_beyond_loopback_unless_enabled(settings: Settings) -> None:
    assert console_enabled(settings, "127.0.0.1") and console_enabled(settings, "::1")
    assert not console_enabled(settings, "0.0.0.0") and not console_enabled(settings, "10.0.0.5")
    assert console_enabled(msgspec.structs.replace(settings, console="on"), "0.0.0.0")
    assert not console_enabled(msgspec.structs.replace(settings, console="off"), "127.0.0.1")


async def test_login_session_csrf_and_hostile_output_over_http(settings: Settings, require_bwrap, require_claude) -> None:
    settings = e2e_ready(settings, require_claude)
    async with Store.for_settings(settings) as store:
        admin, admin_record = await store.create_key("admin", name=HOSTILE)
        developer, _ = await store.create_key("developer")
    bus, seen = await notices_of(settings)
    try:
        async with http_stack(settings, runner_metrics=False) as stack:
            base = stack.base
            async with httpx2.AsyncClient(base_url=base, follow_redirects=False, timeout=60) as anon:
                assert (await anon.get("/console/tasks")).headers["location"] == "/console/login"
                assert (await anon.get("/console/api/tasks")).status_code == 401
                refused = await anon.post("/console/login", data={"key": developer})
                assert refused.status_code == 403 and "does not grant the console" in refused.text
                assert "set-cookie" not in refused.headers
                assert (await wait_for(seen, "console_refused")).actor != "anonymous"
                bad = await anon.post("/console/login", data={"key": "tb_" + "x" * 43})
                assert bad.status_code == 401 and "set-cookie" not in bad.headers
                cross = await anon.post("/console/login", data={"key": admin}, headers={"Origin": "http://evil.example"})
                assert cross.status_code == 403 and "set-cookie" not in cross.headers

            # another key's task whose output is hostile HTML (the scripted model echoes the prompt)
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {developer}"}, timeout=120) as http:
                async with Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client:
                    done = await client.call_tool("complete", {"prompt": HOSTILE, "model": "claude-haiku-4-5"})
                    assert not done.is_error and HOSTILE in done.structured_content["text"]
                    task_id = done.structured_content["task_id"]

            async with httpx2.AsyncClient(base_url=base, follow_redirects=False, timeout=60) as browser:
                login = await browser.post("/console/login", data={"key": admin})
                assert login.status_code == 303 and login.headers["location"] == "/console/tasks"
                cookie = login.headers["set-cookie"].lower()
                assert "httponly" in cookie and "samesite=strict" in cookie and "path=/console" in cookie
                assert (await wait_for(seen, "console_login")).actor == admin_record.prefix

                # an alert fires (published as the audit writer does); its hostile text is escaped
                await bus.nc.publish(
                    f"{settings.subject_prefix}.alerts.security", b'{"kind": "forged_policy", "detail": "<script>alert(2)</script>"}'
                )
                await bus.nc.flush()
                async with asyncio.timeout(20):
                    while "forged_policy" not in (audit_page := (await browser.get("/console/audit")).text):
                        await asyncio.sleep(0.1)
                assert "&lt;script&gt;alert(2)&lt;/script&gt;" in audit_page and "<script>alert(2)" not in audit_page

                pages = {}
                for name in ("tasks", "runners", "spend", "audit", "keys", "profiles", f"tasks/{task_id}"):
                    response = await browser.get(f"/console/{name}")
                    assert response.status_code == 200, name
                    assert "script-src 'self'" in response.headers["content-security-policy"]
                    assert admin not in response.text and developer not in response.text, name
                    pages[name] = response.text
                task_page = pages[f"tasks/{task_id}"]
                assert "&lt;script&gt;alert(&quot;pwned&quot;)&lt;/script&gt;" in task_page
                assert "<script>alert" not in task_page and "<img src=x" not in task_page
                assert "<script>alert" not in pages["keys"] and "&lt;b&gt;bold&lt;/b&gt;" in pages["keys"]
                assert task_id in pages["tasks"]

                stream = await browser.get(f"/console/tasks/{task_id}/stream")
                assert stream.status_code == 200 and "event: end" in stream.text
                assert "<script>" not in stream.text and "\\u003cscript\\u003e" in stream.text

                # CSRF: a state-changing request without the token is refused and audited
                no_token = await browser.post(f"/console/tasks/{task_id}/cancel", data={})
                assert no_token.status_code == 403
                refusal = await wait_for(seen, "console_csrf_refused", "/cancel")
                assert refusal.actor == admin_record.prefix
                token = csrf_of(pages["tasks"])
                forged = await browser.post("/console/logout", data={"csrf": token}, headers={"Origin": "http://evil.example"})
                assert forged.status_code == 403
                assert (await browser.get("/console/tasks")).status_code == 200  # still logged in

                out = await browser.post("/console/logout", data={"csrf": token})
                assert out.status_code == 303 and out.headers["location"] == "/console/login"
                await wait_for(seen, "console_logout")
                assert (await browser.get("/console/tasks")).status_code == 303  # session gone
    finally:
        await bus.close()
