"""The gateway against the real scripted model server, over its real unix socket."""

from __future__ import annotations

import asyncio
import json
import os
import stat
import time
from pathlib import Path

import httpx
import pytest

from bus import Usage

from .conftest import MODEL, body, open_stack, script

SONNET_IN, SONNET_OUT = 3.0, 15.0


def _events(text: str) -> list[dict]:
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


async def test_a_streamed_reply_passes_through_and_is_metered_from_its_usage(tmp_path: Path) -> None:
    async with open_stack(tmp_path, "hello") as s:
        response = await s.client.post("/v1/messages?beta=true", json=body(stream=True), headers=s.auth)
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _events(response.text)
        assert events[0]["type"] == "message_start" and events[-1]["type"] == "message_stop"
        text = "".join(e["delta"].get("text", "") for e in events if e["type"] == "content_block_delta")
        assert text == "Hello from the scripted model."
        logged = s.upstream_requests()[-1]
    [call] = s.calls
    assert call.streamed and call.status == 200 and call.stop_reason == "end_turn"
    assert call.usage == Usage(input_tokens=logged["input_tokens"], output_tokens=logged["output_tokens"])
    assert call.cost_usd == pytest.approx((logged["input_tokens"] * SONNET_IN + logged["output_tokens"] * SONNET_OUT) / 1e6)
    assert call.total_cost_usd == call.cost_usd == s.gateway.spent_usd


async def test_a_json_reply_passes_through_and_is_metered(tmp_path: Path) -> None:
    async with open_stack(tmp_path, "hello") as s:
        first = await s.client.post("/v1/messages", json=body(), headers=s.auth)
        second = await s.client.post("/v1/messages", json=body(), headers=s.auth)
        assert first.status_code == second.status_code == 200
        usage = first.json()["usage"]
    assert [c.usage.output_tokens for c in s.calls] == [usage["output_tokens"]] * 2
    assert s.calls[1].total_cost_usd == pytest.approx(2 * s.calls[0].cost_usd)
    assert not any(c.streamed for c in s.calls)


async def test_a_wrong_or_missing_placeholder_gets_401_and_a_security_notice(tmp_path: Path) -> None:
    async with open_stack(tmp_path, "hello") as s:
        wrong = await s.client.post("/v1/messages", json=body(), headers={"x-api-key": "taskbus-placeholder-guess"})
        missing = await s.client.post("/v1/messages", json=body())
        bearer = await s.client.post("/v1/messages", json=body(), headers={"authorization": f"Bearer {s.placeholder}"})
        assert (wrong.status_code, missing.status_code, bearer.status_code) == (401, 401, 200)
        assert wrong.json()["error"]["type"] == "authentication_error"
        assert len(s.upstream_requests()) == 1  # only the good one went upstream
    assert [n.kind for n in s.notices] == ["bad_placeholder", "bad_placeholder"]
    assert "taskbus-placeholder-guess" not in repr(s.notices)


async def test_the_real_key_is_injected_upstream_and_never_sent_back(tmp_path: Path) -> None:
    async with open_stack(tmp_path, "hello") as s:
        # The scripted model requires the real key; only the gateway has it.
        async with httpx.AsyncClient() as plain:
            direct = await plain.post(f"{s.model.url}/v1/messages", json=body(), headers={"x-api-key": s.placeholder})
        assert direct.status_code == 401
        through = await s.client.post("/v1/messages", json=body(stream=True), headers={**s.auth, "cookie": "a=b", "x-other": "1"})
        assert through.status_code == 200
        seen = s.upstream_requests()[-1]["headers"]
        assert "cookie" not in seen and "x-other" not in seen and seen["x-api-key"] == "[REDACTED]"
        assert s.real_key not in through.text and s.real_key not in str(through.headers)


async def test_an_upstream_error_is_passed_back_redacted_and_costs_nothing(tmp_path: Path) -> None:
    failing = script('[[turns]]\nerror = { status = 529, message = "Overloaded" }\n')
    async with open_stack(tmp_path, failing) as s:
        response = await s.client.post("/v1/messages", json=body(), headers=s.auth)
        assert response.status_code == 529
        assert response.json()["error"] == {"type": "overloaded_error", "message": "Overloaded"}
    [call] = s.calls
    assert call.status == 529 and call.cost_usd == 0 and not call.charged_worst_case


async def test_a_model_outside_the_policy_is_refused_before_it_reaches_upstream(tmp_path: Path) -> None:
    async with open_stack(tmp_path, "hello") as s:
        response = await s.client.post("/v1/messages", json={**body(), "model": "claude-opus-4-8"}, headers=s.auth)
        assert response.status_code == 403
        assert response.json()["error"]["type"] == "permission_error"
        assert s.model.requests() == []
    assert [n.kind for n in s.notices] == ["model_denied"]
    assert s.calls == []


async def test_tool_definitions_outside_the_policy_never_reach_the_model(tmp_path: Path) -> None:
    tools = [{"name": n, "description": n, "input_schema": {"type": "object"}} for n in ("Bash", "WebFetch", "Read", "Write")]
    async with open_stack(tmp_path, "hello", tools=["Bash", "Read"]) as s:
        for _ in range(2):
            response = await s.client.post("/v1/messages", json=body(tools=tools, stream=True), headers=s.auth)
            assert response.status_code == 200
        counted = await s.client.post(
            "/v1/messages/count_tokens", json={"model": MODEL, "messages": body()["messages"], "tools": tools}, headers=s.auth
        )
        assert counted.status_code == 200 and counted.json()["input_tokens"] > 0
        seen = [r["tools"] for r in s.model.requests()]
    assert seen and all(t == ["Bash", "Read"] for t in seen)
    [notice] = s.notices  # reported once, not per request
    assert notice.kind == "tool_dropped" and "WebFetch, Write" in notice.detail
    assert s.gateway.dropped_tools == {"WebFetch", "Write"}


async def test_other_routes_get_a_404_in_the_anthropic_error_shape(tmp_path: Path) -> None:
    async with open_stack(tmp_path, "hello") as s:
        response = await s.client.get("/v1/models", headers=s.auth)
        assert response.status_code == 404
        assert response.json()["type"] == "error" and response.json()["error"]["type"] == "not_found_error"
        bad = await s.client.post("/v1/messages", content=b"{not json", headers=s.auth)
        assert bad.status_code == 400 and "not valid JSON" in bad.json()["error"]["message"]


async def test_the_socket_is_connectable_by_the_sandbox_user(tmp_path: Path) -> None:
    async with open_stack(tmp_path, "hello") as s:
        assert stat.S_IMODE(os.stat(s.socket_path).st_mode) == 0o666
        assert stat.S_IMODE(os.stat(s.socket_path.parent).st_mode) == 0o755
    assert not s.socket_path.exists()


async def test_a_stream_arrives_chunk_by_chunk_while_upstream_is_still_sending(tmp_path: Path) -> None:
    slow = script('chunk_chars = 4\n[[turns]]\ntext = "one two three four five six"\nchunk_delay_ms = 150\n')
    async with open_stack(tmp_path, slow) as s:
        arrivals: list[float] = []
        async with s.client.stream("POST", "/v1/messages", json=body(stream=True), headers=s.auth) as response:
            start = time.monotonic()
            async for chunk in response.aiter_raw():
                if chunk:
                    arrivals.append(time.monotonic() - start)
    # The first bytes came long before the last: the stream was not buffered.
    assert len(arrivals) >= 4
    assert arrivals[-1] - arrivals[0] >= 0.5


async def test_the_expensive_script_never_spends_more_than_the_cap(tmp_path: Path) -> None:
    conversation = [{"role": "user", "content": "go"}]
    # the expensive script's calls cost 1.25, 1.275 and 1.30 USD at opus prices, and each
    # reserves ~1.6 USD of worst-case input (the whole prompt, cache included): with 3.4
    # the first two fit whole (the second with a lowered max_tokens), the rest are refused
    cap = 3.4
    async with open_stack(tmp_path, "expensive", models=["claude-opus-4-8"], model="claude-opus-4-8", max_cost_usd=cap) as s:
        s.gateway.meter.cache_read_credit = False  # the strict worst case (cache reads: see test_meter_cache)
        statuses = []
        for _ in range(4):
            request = {"model": "claude-opus-4-8", "max_tokens": 32000, "messages": conversation, "stream": True}
            response = await s.client.post("/v1/messages", json=request, headers=s.auth)
            statuses.append(response.status_code)
            if response.status_code != 200:
                error = response.json()["error"]
                assert error["type"] == "invalid_request_error" and "cost cap" in error["message"]
                assert response.headers["x-should-retry"] == "false"
                continue
            blocks = [e["content_block"] for e in _events(response.text) if e["type"] == "content_block_start"]
            tools = [b for b in blocks if b["type"] == "tool_use"]
            if tools:  # answer the Bash call like Claude Code would
                reply = [{"type": "tool_result", "tool_use_id": tools[0]["id"], "content": "ok"}]
                conversation = [*conversation, {"role": "assistant", "content": tools}, {"role": "user", "content": reply}]
            else:  # cut short by the lowered max_tokens
                conversation = [*conversation, {"role": "assistant", "content": "..."}, {"role": "user", "content": "go on"}]
        upstream = s.upstream_requests()
    assert statuses == [200, 200, 400, 400]
    assert s.gateway.exhausted
    assert s.calls[-1].total_cost_usd <= cap
    assert sum(c.cost_usd for c in s.calls) == pytest.approx(s.calls[-1].total_cost_usd)
    # max_tokens was lowered as the cap came near; no refused call reached the model.
    assert upstream[0]["max_tokens"] == 32000 and upstream[-1]["max_tokens"] < 32000
    assert len(upstream) == sum(1 for code in statuses if code == 200)


async def test_concurrent_calls_of_one_task_cannot_overshoot_the_cap(tmp_path: Path) -> None:
    # Each call: ~20 input tokens and up to 1000 output at 15 USD/Mtok => worst ~0.015 USD.
    cap = 0.05
    pricey = script('[[turns]]\nat = "any"\ntext = "x"\nusage = { output_tokens = 900 }\ndelay_ms = 50\n')
    async with open_stack(tmp_path, pricey, max_cost_usd=cap) as s:
        responses = await asyncio.gather(*(s.client.post("/v1/messages", json=body(f"call {i}"), headers=s.auth) for i in range(12)))
        codes = sorted(r.status_code for r in responses)
    assert 200 in codes and 400 in codes
    assert s.gateway.spent_usd <= cap
    assert max(c.total_cost_usd for c in s.calls) <= cap
    assert all(c.max_tokens <= 1000 for c in s.calls)


async def test_a_client_that_hangs_up_mid_stream_is_charged_the_worst_case(tmp_path: Path) -> None:
    slow = script('chunk_chars = 2\n[[turns]]\ntext = "a fairly long reply that streams slowly"\nchunk_delay_ms = 100\n')
    async with open_stack(tmp_path, slow) as s:
        async with s.client.stream("POST", "/v1/messages", json=body(stream=True, max_tokens=100), headers=s.auth) as response:
            async for _chunk in response.aiter_raw():
                break  # hang up after the first bytes
        deadline = time.monotonic() + 10
        while not s.calls and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
    [call] = s.calls
    assert call.charged_worst_case
    assert call.cost_usd == pytest.approx((call.input_tokens_bound * 3.75 + 100 * SONNET_OUT) / 1e6)


async def test_the_stream_the_agent_reads_is_byte_for_byte_what_upstream_sent(tmp_path: Path) -> None:
    request = body("same bytes please", stream=True)
    async with open_stack(tmp_path, "write-a-file") as s:
        through = await s.client.post("/v1/messages", json=request, headers=s.auth)
        async with httpx.AsyncClient() as plain:
            direct = await plain.post(f"{s.model.url}/v1/messages", json=request, headers={"x-api-key": s.real_key})
    assert through.status_code == direct.status_code == 200
    assert through.content == direct.content
    assert b"tool_use" in through.content
