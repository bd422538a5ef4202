"""The MCP tools through the SDK's in-memory Client (both protocol modes), on real NATS and a
real profiles Store. These need no runner: queued tasks, refusals, cancel before start,
isolation between keys, the events resource."""

from __future__ import annotations

import asyncio
import json

import pytest
from mcp import Client, MCPError

from bus import Settings
from server._mcp_app import create_mcp_server

MODES = pytest.mark.parametrize("mode", ["auto", "legacy"])


def _text(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


@MODES
async def test_tools_are_listed_with_descriptions_and_schemas(settings: Settings, make_stack, mode: str) -> None:
    async with make_stack(settings) as stack:
        key = await stack.key("developer")
        async with Client(create_mcp_server(stack.dispatcher, api_key=key), mode=mode) as client:
            tools = {t.name: t for t in (await client.list_tools()).tools}
            assert {"complete", "run_task", "get_task", "cancel_task", "list_tasks"} <= set(tools)
            run = tools["run_task"]
            assert "sandbox" in run.description and "wait=false" in run.description
            assert run.input_schema["required"] == ["description"]
            assert {"allow_tools", "files", "timeout_s", "max_cost_usd", "wait"} <= set(run.input_schema["properties"])
            assert "prompt" in tools["complete"].input_schema["properties"]
            templates = {t.uri_template for t in (await client.list_resource_templates()).resource_templates}
            assert "taskbus://tasks/{task_id}/events" in templates


@MODES
async def test_a_tool_the_profile_lacks_gets_a_clear_error_an_audit_event_and_nothing_published(
    settings: Settings, make_stack, mode: str
) -> None:
    async with make_stack(settings) as stack:
        key = await stack.key("complete-only")
        async with Client(create_mcp_server(stack.dispatcher, api_key=key), mode=mode) as client:
            result = await client.call_tool("run_task", {"description": "delete everything"})
        assert result.is_error
        text = _text(result)
        assert text.startswith("[permission_denied]") and "run_task" in text and "Traceback" not in text
        assert result.structured_content["error"]["code"] == "permission_denied"
        info = await stack.bus.js.stream_info(stack.bus.subjects.jobs_stream)
        assert info.state.messages == 0
        async with asyncio.timeout(5):
            while not any(n.kind == "denied" and n.code == "permission_denied" for n in stack.notices):
                await asyncio.sleep(0.01)


@MODES
async def test_a_revoked_key_gets_an_error_saying_what_to_do(settings: Settings, make_stack, mode: str) -> None:
    async with make_stack(settings) as stack:
        key = await stack.key("developer")
        await stack.store.revoke((await stack.store.authenticate(key)).prefix)
        async with Client(create_mcp_server(stack.dispatcher, api_key=key), mode=mode) as client:
            result = await client.call_tool("complete", {"prompt": "hi"})
        assert result.is_error and _text(result).startswith("[key_revoked]")
        assert "taskbus keys create" in _text(result) and key not in _text(result)


@MODES
async def test_bad_arguments_are_an_error_naming_the_argument(settings: Settings, make_stack, mode: str) -> None:
    async with make_stack(settings) as stack:
        key = await stack.key("developer")
        async with Client(create_mcp_server(stack.dispatcher, api_key=key), mode=mode) as client:
            result = await client.call_tool("complete", {})
            assert result.is_error and "prompt" in _text(result)
            result = await client.call_tool("run_task", {"description": "x", "timeout_s": 0})
            assert result.is_error and "timeout_s" in _text(result)


@MODES
async def test_wait_false_returns_the_task_id_at_once_and_cancel_before_start_ends_it_cancelled(
    settings: Settings, make_stack, mode: str
) -> None:
    async with make_stack(settings) as stack:
        key = await stack.key("developer")
        other = await stack.key("developer")
        server = create_mcp_server(stack.dispatcher, api_key=key)
        async with Client(server, mode=mode) as client:
            result = await client.call_tool("run_task", {"description": "write hello.txt", "wait": False})
            assert not result.is_error, _text(result)
            task_id = result.structured_content["task_id"]
            assert result.structured_content["status"] == "queued"
            status = (await client.call_tool("get_task", {"task_id": task_id})).structured_content
            assert status["status"] == "accepted" and status["kind"] == "task"
            listed = (await client.call_tool("list_tasks", {})).structured_content["tasks"]
            assert [t["task_id"] for t in listed] == [task_id]

            # another key cannot see or cancel it
            async with Client(create_mcp_server(stack.dispatcher, api_key=other), mode=mode) as intruder:
                for tool in ("get_task", "cancel_task"):
                    denied = await intruder.call_tool(tool, {"task_id": task_id})
                    assert denied.is_error and _text(denied).startswith("[not_found]")
                assert (await intruder.call_tool("list_tasks", {})).structured_content["tasks"] == []
                with pytest.raises(MCPError):
                    await intruder.read_resource(f"taskbus://tasks/{task_id}/events")

            cancelled = await client.call_tool("cancel_task", {"task_id": task_id})
            assert not cancelled.is_error
            async with asyncio.timeout(10):
                while (await client.call_tool("get_task", {"task_id": task_id})).structured_content["status"] != "cancelled":
                    await asyncio.sleep(0.05)
            events = (await client.read_resource(f"taskbus://tasks/{task_id}/events")).contents[0].text
            kinds = [json.loads(line)["type"] for line in events.splitlines()]
            assert kinds == ["accepted", "finished"]
        record = await stack.store.get_task(task_id)
        assert record.status == "cancelled" and record.cost_usd == 0
        reservation = await stack.store.get_reservation(task_id)
        assert reservation is not None and reservation.state == "settled" and reservation.actual_usd == 0


@MODES
async def test_a_waiting_run_task_sends_keepalive_progress_and_client_cancel_cancels_the_task(
    settings: Settings, make_stack, mode: str
) -> None:
    async with make_stack(settings) as stack:
        key = await stack.key("developer")
        keepalives = asyncio.Event()
        messages: list[str] = []

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            messages.append(message or "")
            if sum(m.startswith("working") for m in messages) >= 3:
                keepalives.set()

        server = create_mcp_server(stack.dispatcher, api_key=key, keepalive_s=0.05)
        async with Client(server, mode=mode) as client:
            # no runner here: the task stays queued, so only keep-alive progress arrives
            call = asyncio.create_task(client.call_tool("run_task", {"description": "wait"}, progress_callback=on_progress))
            async with asyncio.timeout(10):
                await keepalives.wait()
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        (record,) = await stack.store.list_tasks(None)
        async with asyncio.timeout(10):
            while (record := await stack.store.get_task(record.task_id)).status != "cancelled":
                await asyncio.sleep(0.02)
        assert any(n.kind == "task_cancelled" and n.task_id == record.task_id for n in stack.notices)
