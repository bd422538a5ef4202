"""The console in a real headless Chromium (Debian's ``chromium``, driven by Playwright)
against the real stack: scripted model, bwrap runner with the real Claude Code CLI, the
server over HTTP, the audit writer.

Screenshots of each page go to the test's tmp dir; with ``TASKBUS_UPDATE_SCREENSHOTS=1``
they are also copied to docs/console/ (what the README and docs/console.md show).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from stack_kit import e2e_ready, http_stack

from bus import Settings
from profiles import Store

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
DOCS = Path(__file__).resolve().parents[2] / "docs" / "console"
HOSTILE = '<script>alert("pwned")</script><img src=x onerror=alert(1)><b>bold</b>'
WAIT_MS = 120_000


@pytest.fixture
def require_chromium() -> None:
    from server_kit import require_or_skip  # skip locally, FAIL under CI=true

    if not CHROMIUM.is_file():
        require_or_skip("Debian chromium", "run `scripts/setup browser`")
    try:
        import playwright  # noqa: F401
    except ImportError:
        require_or_skip("the playwright package", "run `scripts/setup python`")


@contextlib.asynccontextmanager
async def audit_writer(settings: Settings) -> AsyncIterator[None]:
    from audit import run_audit

    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(run_audit(settings, stop=stop, ready=ready))
    async with asyncio.timeout(30):
        await asyncio.wait({task, asyncio.create_task(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        task.result()
    try:
        yield
    finally:
        stop.set()
        async with asyncio.timeout(30):
            await task


class Shots:
    def __init__(self, page: Any, folder: Path) -> None:
        self.page, self.folder, self.taken = page, folder, []
        folder.mkdir(parents=True, exist_ok=True)

    async def __call__(self, name: str) -> None:
        path = self.folder / f"{name}.png"
        await self.page.screenshot(path=str(path), full_page=True)
        self.taken.append(path)

    def publish(self) -> None:
        if os.environ.get("TASKBUS_UPDATE_SCREENSHOTS") == "1":
            DOCS.mkdir(parents=True, exist_ok=True)
            for path in self.taken:
                shutil.copy(path, DOCS / path.name)


async def mcp_call(base: str, key: str, tool: str, args: dict[str, Any]) -> dict[str, Any]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=180) as http:
        async with Client(streamable_http_client(f"{base}/mcp", http_client=http)) as client:
            result = await client.call_tool(tool, args)
            assert not result.is_error, result.content
            return result.structured_content


async def test_an_operator_follows_cancels_downloads_searches_and_logs_out_in_a_real_browser(
    settings: Settings, tmp_path: Path, require_bwrap, require_claude, require_chromium
) -> None:
    from playwright.async_api import async_playwright, expect

    settings = e2e_ready(settings, require_claude)
    async with Store.for_settings(settings) as store:
        admin, _ = await store.create_key("admin", name="ops laptop")
        developer, developer_record = await store.create_key("developer", name="ci bot")
    async with http_stack(settings) as stack, audit_writer(stack.settings), async_playwright() as pw:
        base = stack.base
        browser = await pw.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            context = await browser.new_context(viewport={"width": 1366, "height": 800}, accept_downloads=True)
            page = await context.new_page()
            page.set_default_timeout(WAIT_MS)
            expect.set_options(timeout=WAIT_MS)  # assertions wait like actions (a loaded machine starts Claude Code slowly)
            dialogs: list[str] = []
            page.on("dialog", lambda d: (dialogs.append(d.message), asyncio.ensure_future(d.dismiss())))
            shot = Shots(page, tmp_path / "screenshots")

            # a key without the console permission is refused
            await page.goto(f"{base}/console")
            assert page.url.endswith("/console/login")
            await shot("login")
            await page.fill("input[name=key]", developer)
            await page.click("button[type=submit]")
            await expect(page.locator("#login-error")).to_contain_text("does not grant the console")
            assert "taskbus_console" not in {c["name"] for c in await context.cookies()}

            # the operator logs in; the key is never shown again
            await page.fill("input[name=key]", admin)
            await page.click("button[type=submit]")
            await page.wait_for_url(f"{base}/console/tasks")
            cookie = next(c for c in await context.cookies() if c["name"] == "taskbus_console")
            assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
            assert admin not in await page.content()

            # a task started over MCP appears in the live list and streams its events live
            runaway = await mcp_call(
                base, developer, "run_task", {"description": "[script:runaway] keep going", "timeout_s": 300, "wait": False}
            )
            task_id = runaway["task_id"]
            await expect(page.locator(f"#tasks >> text={task_id}")).to_be_visible()
            await shot("tasks")
            await page.click(f"text={task_id}")
            await page.wait_for_url(f"{base}/console/tasks/{task_id}")
            events = page.locator("#events tr:not(.empty)")
            before = await events.count()
            await expect(page.locator("#events tr.t-tool_call").first).to_be_visible()
            await page.wait_for_function("n => document.querySelectorAll('#events tr:not(.empty)').length > n", arg=max(before, 1) + 2)
            assert await events.count() > before  # rows arrived while the page was open, without a reload
            await shot("task-live")

            # cancel from the console: the task ends cancelled
            await page.click("#cancel button")
            await page.wait_for_url(f"{base}/console/tasks/{task_id}")
            await expect(page.locator("#task-status")).to_contain_text("cancelled")
            await expect(page.locator("#events tr.t-finished")).to_have_count(1)

            # an artifact downloads with its content
            wrote = await mcp_call(base, developer, "run_task", {"description": "[script:write-a-file] Write hello.txt"})
            assert wrote["status"] == "succeeded"
            await page.goto(f"{base}/console/tasks/{wrote['task_id']}")
            async with page.expect_download() as download_info:
                await page.click("#artifacts a")
            download = await download_info.value
            assert download.suggested_filename == "hello.txt"
            assert Path(await download.path()).read_text() == "hello from the scripted model\n"
            await shot("task-finished")

            # hostile output is text, not markup
            hostile = await mcp_call(base, developer, "complete", {"prompt": HOSTILE, "model": "claude-haiku-4-5"})
            await page.goto(f"{base}/console/tasks/{hostile['task_id']}")
            await expect(page.locator("#result")).to_contain_text('<script>alert("pwned")</script>')
            assert await page.locator("main img").count() == 0 and await page.locator("main b").count() == 0
            assert await page.locator("script").count() == 1  # only the console's own script
            await shot("task-hostile")

            # CSRF: a state-changing request without the token is refused and audited
            forged = await context.request.post(f"{base}/console/tasks/{wrote['task_id']}/cancel", form={})
            assert forged.status == 403

            # the audit log: search the cancelled task, find the refusal, verify the chain
            for query, expected in ((f"task={task_id}", "task_cancelled"), ("type=console_csrf_refused", "/cancel")):
                async with asyncio.timeout(60):
                    while True:
                        await page.goto(f"{base}/console/audit?{query}")
                        if expected in await page.locator("#audit-rows").inner_text():
                            break
                        await asyncio.sleep(0.5)
            await page.goto(f"{base}/console/audit?task={task_id}&verify=1")
            await expect(page.locator("#chain")).to_contain_text("chain verified")
            await shot("audit")

            async with asyncio.timeout(60):  # heartbeats heard since login
                while True:
                    await page.goto(f"{base}/console/runners")
                    if stack.runner.id in await page.locator("main table").first.inner_text():
                        break
                    await asyncio.sleep(0.5)
            await expect(page.locator("main table").first).to_contain_text("bwrap")
            await shot("runners")
            for name in ("spend", "keys", "profiles"):
                await page.goto(f"{base}/console/{name}")
                await shot(name)
            await page.goto(f"{base}/console/keys")
            await expect(page.locator("main")).to_contain_text(developer_record.prefix)
            assert developer not in await page.content()

            # log out: the session is gone
            await page.click("#logout button")
            await page.wait_for_url(f"{base}/console/login")
            await page.goto(f"{base}/console/tasks")
            assert page.url.endswith("/console/login")
            assert dialogs == []  # no script from task output ever ran
            shot.publish()
        finally:
            await browser.close()
