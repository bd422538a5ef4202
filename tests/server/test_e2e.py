"""End to end: MCP in-memory client (both protocol modes) -> dispatch -> NATS -> the real runner
with bwrap and the real Claude Code CLI -> the scripted model, and back."""

from __future__ import annotations

import asyncio
import json

import mcp_types as types
import pytest
from mcp import Client
from server_kit import sandboxes_left

from bus import Settings
from server._mcp_app import create_mcp_server

MODES = pytest.mark.parametrize("mode", ["auto", "legacy"])
WRITE_A_FILE = "[script:write-a-file] Write hello.txt saying hello."


def _text(result) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


@MODES
async def test_complete_and_run_task_end_to_end_with_progress_and_artifacts(e2e_settings: Settings, make_e2e, mode: str) -> None:
    async with make_e2e(e2e_settings) as stack:
        key = await stack.key("developer")
        async with Client(create_mcp_server(stack.dispatcher, api_key=key), mode=mode) as client:
            done = await client.call_tool("complete", {"prompt": "Echo this back", "model": "claude-haiku-4-5"})
            assert not done.is_error, _text(done)
            answer = done.structured_content
            assert "Echo this back" in answer["text"] and answer["model"] == "claude-haiku-4-5"
            assert answer["routing_reason"] and answer["usage"]["output_tokens"] > 0 and answer["cost_usd"] > 0

            progress: list[tuple[float, str | None]] = []

            async def on_progress(value: float, total: float | None, message: str | None) -> None:
                progress.append((value, message))

            result = await client.call_tool("run_task", {"description": WRITE_A_FILE}, progress_callback=on_progress)
            assert not result.is_error, _text(result)
            task = result.structured_content
            assert task["status"] == "succeeded" and task["cost_usd"] > 0 and task["duration_ms"] > 0
            assert [a["path"] for a in task["artifacts"]] == ["hello.txt"]
            links = [c for c in result.content if isinstance(c, types.ResourceLink)]
            assert [str(link.uri) for link in links] == [f"taskbus://tasks/{task['task_id']}/artifacts/hello.txt"]
            inline = [c for c in result.content if isinstance(c, types.EmbeddedResource)]
            assert inline and "hello from the scripted model" in inline[0].resource.text

            messages = [m or "" for _, m in progress]
            assert any(m.startswith("started") for m in messages)
            assert any(m.startswith("tool call Bash") for m in messages)
            assert [v for v, _ in progress] == sorted(v for v, _ in progress)

            artifact = await client.read_resource(str(links[0].uri))
            assert artifact.contents[0].text == "hello from the scripted model\n"
            events = (await client.read_resource(f"taskbus://tasks/{task['task_id']}/events")).contents[0].text
            seqs = [json.loads(line)["seq"] for line in events.splitlines()]
            types_ = [json.loads(line)["type"] for line in events.splitlines()]
            assert seqs == list(range(1, len(seqs) + 1))
            assert types_[0] == "accepted" and types_[-1] == "finished" and types_.count("finished") == 1
        record = await stack.store.get_task(task["task_id"])
        assert record.status == "succeeded" and record.cost_usd == pytest.approx(task["cost_usd"])
        reservation = await stack.store.get_reservation(task["task_id"])
        assert reservation.state == "settled" and reservation.actual_usd == pytest.approx(task["cost_usd"])


async def test_wait_false_then_get_task_until_done(e2e_settings: Settings, make_e2e) -> None:
    async with make_e2e(e2e_settings) as stack:
        key = await stack.key("developer")
        async with Client(create_mcp_server(stack.dispatcher, api_key=key)) as client:
            queued = await client.call_tool("run_task", {"description": WRITE_A_FILE, "wait": False})
            task_id = queued.structured_content["task_id"]
            seen = set()
            async with asyncio.timeout(120):
                while True:
                    status = (await client.call_tool("get_task", {"task_id": task_id})).structured_content
                    seen.add(status["status"])
                    if status["status"] not in ("accepted", "running"):
                        break
                    await asyncio.sleep(0.2)
            assert status["status"] == "succeeded" and status["artifacts"][0]["path"] == "hello.txt"
            assert status["result"] and status["cost_usd"] > 0


async def test_a_client_cancelling_run_task_cancels_the_task_and_leaves_no_sandbox(e2e_settings: Settings, make_e2e) -> None:
    async with make_e2e(e2e_settings) as stack:
        key = await stack.key("developer")
        started = asyncio.Event()

        async def on_progress(value: float, total: float | None, message: str | None) -> None:
            if message and message.startswith("tool call"):
                started.set()

        async with Client(create_mcp_server(stack.dispatcher, api_key=key)) as client:
            call = asyncio.create_task(
                client.call_tool(
                    "run_task", {"description": "[script:runaway] keep going", "timeout_s": 300}, progress_callback=on_progress
                )
            )
            async with asyncio.timeout(120):
                await started.wait()
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
        (record,) = await stack.store.list_tasks(None)
        async with asyncio.timeout(30):
            while (record := await stack.store.get_task(record.task_id)).status != "cancelled":
                await asyncio.sleep(0.1)
        assert await sandboxes_left(stack.settings) == []


async def test_twenty_concurrent_tasks_against_a_budget_for_five_run_five_and_refuse_fifteen(e2e_settings: Settings, make_e2e) -> None:
    async with make_e2e(e2e_settings, slots=5) as stack:
        await stack.store.update_profile("developer", max_concurrent=100)
        key = await stack.key("developer", day_usd=0.25)
        async with Client(create_mcp_server(stack.dispatcher, api_key=key)) as client:
            results = await asyncio.gather(
                *[client.call_tool("run_task", {"description": "[script:hello] say hello", "max_cost_usd": 0.05}) for _ in range(20)]
            )
        ran = [r for r in results if not r.is_error]
        refused = [r for r in results if r.is_error]
        assert len(ran) == 5 and len(refused) == 15
        assert {r.structured_content["error"]["code"] for r in refused} == {"budget_exceeded"}
        assert all(r.structured_content["status"] == "succeeded" for r in ran)
        prefix = (await stack.store.authenticate(key)).prefix
        budget = await stack.store.remaining_budget(prefix)
        assert budget.day.used_usd <= 0.25 + 1e-9
        assert budget.day.used_usd == pytest.approx(sum(r.structured_content["cost_usd"] for r in ran))


async def _complete_and_task_over(client) -> None:
    done = await client.call_tool("complete", {"prompt": "ping over the wire", "model": "claude-haiku-4-5"})
    assert not done.is_error, _text(done)
    assert "ping over the wire" in done.structured_content["text"]
    progress: list[str] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append(message or "")

    result = await client.call_tool("run_task", {"description": WRITE_A_FILE}, progress_callback=on_progress)
    assert not result.is_error, _text(result)
    assert any(m.startswith("tool call Bash") for m in progress)
    link = next(c for c in result.content if isinstance(c, types.ResourceLink))
    assert (await client.read_resource(str(link.uri))).contents[0].text == "hello from the scripted model\n"


async def test_complete_and_run_task_over_streamable_http(e2e_settings: Settings) -> None:
    import httpx2
    from mcp.client.streamable_http import streamable_http_client
    from server_kit import e2e_model_and_runner
    from test_http import http_server

    async with e2e_model_and_runner(e2e_settings) as settings:
        from profiles import Store

        async with Store.for_settings(settings) as store:
            key = (await store.create_key("developer"))[0]
        async with http_server(settings) as url:
            async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
                async with Client(streamable_http_client(url, http_client=http)) as client:
                    await _complete_and_task_over(client)


async def test_complete_and_run_task_over_stdio(e2e_settings: Settings) -> None:
    from server_kit import e2e_model_and_runner
    from test_stdio import stdio_params

    async with e2e_model_and_runner(e2e_settings) as settings:
        from profiles import Store

        async with Store.for_settings(settings) as store:
            key = (await store.create_key("developer"))[0]
        params = stdio_params(settings, key)
        params.env["TASKBUS_UPSTREAM_URL"] = settings.upstream_url
        async with Client(params) as client:
            await _complete_and_task_over(client)


async def test_a_nats_publisher_with_only_nats_py_gets_its_task_events(e2e_settings: Settings, make_e2e) -> None:
    from test_publisher_example import _start

    async with make_e2e(e2e_settings) as stack:
        key = await stack.key("developer")
        proc = await _start(stack.settings, key, WRITE_A_FILE)
        async with asyncio.timeout(120):
            out, err = await proc.communicate()
        lines = out.decode().splitlines()
        assert proc.returncode == 0, out.decode() + err.decode()
        assert lines[0].startswith("accepted t_")
        kinds = [line.split()[1] for line in lines[1:-1]]
        assert kinds[0] == "accepted" and kinds[-1] == "finished" and "artifact" in kinds and "tool_call" in kinds
        assert lines[-1].startswith("result: succeeded")


async def test_a_cached_completion_is_answered_again_without_a_model_call(e2e_settings: Settings, make_e2e) -> None:
    async with make_e2e(e2e_settings) as stack:
        key = await stack.key("developer")
        args = {"prompt": "cache me", "model": "claude-haiku-4-5", "temperature": 0, "cache": True}
        async with Client(create_mcp_server(stack.dispatcher, api_key=key)) as client:
            first = (await client.call_tool("complete", args)).structured_content
            second = (await client.call_tool("complete", args)).structured_content
            uncached = (await client.call_tool("complete", {**args, "cache": False})).structured_content
        assert first["cached"] is False and first["cost_usd"] > 0
        assert second["cached"] is True and second["cost_usd"] == 0 and second["text"] == first["text"]
        assert uncached["cached"] is False and uncached["task_id"] != first["task_id"]
        assert second["task_id"] not in (first["task_id"], uncached["task_id"])
        tasks = {t.task_id: t for t in await stack.store.list_tasks(None)}
        assert len(tasks) == 3 and tasks[second["task_id"]].cost_usd == 0  # a hit is registered too


async def test_a_completion_over_its_cost_cap_is_an_error_with_the_budget_code(e2e_settings: Settings, make_e2e) -> None:
    async with make_e2e(e2e_settings) as stack:
        key = await stack.key("developer")
        async with Client(create_mcp_server(stack.dispatcher, api_key=key)) as client:
            result = await client.call_tool(
                "complete", {"prompt": "[script:expensive] spend", "model": "claude-haiku-4-5", "max_cost_usd": 0.000001}
            )
        assert result.is_error, _text(result)
        assert result.structured_content["error"]["code"] == "budget_exceeded"
        assert _text(result).startswith("[budget_exceeded]") and "max_cost_usd" in _text(result)
        # a cap below the cheapest possible call is refused at admission (nothing runs, nothing is spent)
        assert result.structured_content.get("cost_usd", 0) <= 0.000001
