"""Streamable HTTP with bearer API keys, served by ``run_server`` on a real port."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from bus import Settings
from profiles import Store
from server._service import run_server


@contextlib.asynccontextmanager
async def http_server(settings: Settings) -> AsyncIterator[str]:
    ready, stop, bound = asyncio.Event(), asyncio.Event(), []
    task = asyncio.create_task(run_server(settings, transport="http", host="127.0.0.1", port=0, ready=ready, stop=stop, bound=bound))
    try:
        async with asyncio.timeout(20):
            await asyncio.wait({task, asyncio.create_task(ready.wait())}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            task.result()
        yield f"http://127.0.0.1:{bound[0]}/mcp"
    finally:
        stop.set()
        async with asyncio.timeout(20):
            await task


async def _mcp_status(url: str, key: str | None) -> int:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    async with httpx2.AsyncClient() as http:
        return (await http.post(url, json=body, headers=headers)).status_code


async def test_http_refuses_a_missing_or_revoked_key_with_401_and_serves_a_valid_one(settings: Settings) -> None:
    async with Store.for_settings(settings) as store:
        key, record = await store.create_key("developer")
        revoked, revoked_record = await store.create_key("developer")
        await store.revoke(revoked_record.prefix)
    async with http_server(settings) as url:
        assert await _mcp_status(url, None) == 401
        assert await _mcp_status(url, "tb_" + "n" * 43) == 401
        assert await _mcp_status(url, revoked) == 401
        assert await _mcp_status(url, key) == 200
        for mode in ("auto", "legacy"):
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}) as http:
                async with Client(streamable_http_client(url, http_client=http), mode=mode) as client:
                    queued = await client.call_tool("run_task", {"description": "say hi", "wait": False})
                    assert not queued.is_error, queued.content
                    task_id = queued.structured_content["task_id"]
                    status = await client.call_tool("get_task", {"task_id": task_id})
                    assert status.structured_content["key_id"] == record.prefix
                    cancelled = await client.call_tool("cancel_task", {"task_id": task_id})
                    assert not cancelled.is_error
