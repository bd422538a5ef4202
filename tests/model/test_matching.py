"""How a request picks its reply: markers, reply number, tool results, side requests, limits."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anthropic
import httpx
import httpx2
import pytest

from sandbox._scripted import ScriptedModelServer, parse_script, read_log

CONVERSATION = parse_script(
    """
name = "conversation"
[[turns]]
text = "step one for {prompt}"
tool_use = [{ name = "Bash", input = { command = "echo {prompt}" } }]
[[turns]]
after_tool_result = true
text = "finished {prompt} at reply {reply}"
""",
    source="conversation",
)


def _user(text: str) -> dict[str, Any]:
    return {"role": "user", "content": text}


def _tool_result(tool_id: str, output: str) -> dict[str, Any]:
    return {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool_id, "content": output}]}


async def _post(http: httpx.AsyncClient, path: str, body: dict[str, Any]) -> dict[str, Any]:
    response = await http.post(path, json=body)
    assert response.status_code == 200, response.text
    return response.json()


@pytest.fixture
async def http(model: ScriptedModelServer) -> Any:
    async with httpx.AsyncClient(base_url=model.url, timeout=30) as client:
        yield client


async def test_without_a_script_the_reply_echoes_the_prompt(http: httpx.AsyncClient) -> None:
    reply = await _post(http, "/v1/messages", {"model": "m", "max_tokens": 100, "messages": [_user("ping 42")]})
    assert reply["content"] == [{"type": "text", "text": "ping 42"}]
    assert reply["stop_reason"] == "end_turn"


async def test_reply_number_selects_the_turn_and_tool_results_continue_the_script(tmp_path: Path) -> None:
    async with ScriptedModelServer(CONVERSATION) as server, httpx.AsyncClient(base_url=server.url) as http:
        messages = [_user("alpha")]
        first = await _post(http, "/v1/messages", {"model": "m", "max_tokens": 100, "messages": messages})
        tool = first["content"][1]
        assert tool["input"] == {"command": "echo alpha"}
        messages += [{"role": "assistant", "content": first["content"]}, _tool_result(tool["id"], "alpha")]
        second = await _post(http, "/v1/messages", {"model": "m", "max_tokens": 100, "messages": messages})
        assert second["content"] == [{"type": "text", "text": "finished alpha at reply 1"}]
        # Past the end of the script: the default echo, not a crash.
        messages += [{"role": "assistant", "content": second["content"]}, _user("and now?")]
        third = await _post(http, "/v1/messages", {"model": "m", "max_tokens": 100, "messages": messages})
        assert third["content"][0]["text"] == "and now?"


async def test_prompt_is_the_latest_user_text_not_reminders_next_to_tool_results(tmp_path: Path) -> None:
    async with ScriptedModelServer(CONVERSATION) as server, httpx.AsyncClient(base_url=server.url) as http:
        result_with_reminder = {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": "t1", "content": "ok"},
                {"type": "text", "text": "<system-reminder>files changed</system-reminder>"},
            ],
        }
        messages = [
            _user("beta"),
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
            result_with_reminder,
        ]
        reply = await _post(http, "/v1/messages", {"model": "m", "max_tokens": 100, "messages": messages})
    assert reply["content"][0]["text"] == "finished beta at reply 1"


async def test_echo_leaves_out_the_system_reminders_claude_code_wraps_around_the_prompt() -> None:
    prompt = {
        "role": "user",
        "content": [
            {"type": "text", "text": "<system-reminder>\n# currentDate\nToday is 2026-12-02.\n</system-reminder>\n"},
            {"type": "text", "text": "<system-reminder>context</system-reminder>\n\nWrite hello.py and run it"},
        ],
    }
    async with ScriptedModelServer() as server, httpx.AsyncClient(base_url=server.url) as http:
        reply = await _post(http, "/v1/messages", {"model": "m", "max_tokens": 100, "messages": [prompt]})
    assert reply["content"] == [{"type": "text", "text": "Write hello.py and run it"}]


async def test_after_tool_result_false_turn_is_skipped_when_a_tool_result_came_back(tmp_path: Path) -> None:
    script = parse_script(
        """
[[turns]]
at = "any"
after_tool_result = false
text = "fresh question"
[[turns]]
at = "any"
after_tool_result = true
text = "got the tool output"
""",
        source="t",
    )
    async with ScriptedModelServer(script) as server, httpx.AsyncClient(base_url=server.url) as http:
        plain = await _post(http, "/v1/messages", {"model": "m", "max_tokens": 9, "messages": [_user("q")]})
        messages = [
            _user("q"),
            {"role": "assistant", "content": [{"type": "tool_use", "id": "t1", "name": "Bash", "input": {}}]},
            _tool_result("t1", "out"),
        ]
        after = await _post(http, "/v1/messages", {"model": "m", "max_tokens": 9, "messages": messages})
    assert plain["content"][0]["text"] == "fresh question"
    assert after["content"][0]["text"] == "got the tool output"


async def test_marker_in_system_prompt_selects_the_script(http: httpx.AsyncClient) -> None:
    reply = await _post(
        http,
        "/v1/messages",
        {"model": "m", "max_tokens": 100, "system": [{"type": "text", "text": "x [script:hello]"}], "messages": [_user("hi")]},
    )
    assert reply["content"][0]["text"] == "Hello from the scripted model."


async def test_mid_conversation_system_messages_do_not_count_as_turns(http: httpx.AsyncClient) -> None:
    messages = [_user("[script:write-a-file] go"), {"role": "system", "content": "Available agent types: ..."}]
    reply = await _post(http, "/v1/messages", {"model": "m", "max_tokens": 1000, "messages": messages})
    assert reply["content"][1]["name"] == "Bash"


async def test_structured_output_side_requests_get_schema_json_and_never_a_script_turn(
    http: httpx.AsyncClient, model: ScriptedModelServer
) -> None:
    schema = {"type": "object", "properties": {"title": {"type": "string"}}, "required": ["title"]}
    reply = await _post(
        http,
        "/v1/messages",
        {
            "model": "claude-opus-4-8",
            "max_tokens": 64000,
            "tools": [],
            "output_config": {"format": {"type": "json_schema", "schema": schema}},
            "messages": [_user("<session>\n[script:write-a-file] go\n</session>")],
        },
    )
    assert reply["content"] == [{"type": "text", "text": '{"title":"Scripted session"}'}]
    assert [r.get("side") for r in model.requests()] == ["structured_output"]


async def test_runaway_repeats_its_last_turn_forever(http: httpx.AsyncClient) -> None:
    messages: list[dict[str, Any]] = [_user("[script:runaway] go")]
    for _ in range(5):
        reply = await _post(http, "/v1/messages", {"model": "m", "max_tokens": 1000, "messages": messages})
        assert reply["stop_reason"] == "tool_use"
        tool = reply["content"][-1]
        messages += [{"role": "assistant", "content": reply["content"]}, _tool_result(tool["id"], "tick")]
    assert "sleep 1" in tool["input"]["command"]


async def test_max_tokens_truncates_the_reply_and_caps_reported_output(http: httpx.AsyncClient) -> None:
    long = "word " * 400
    reply = await _post(http, "/v1/messages", {"model": "m", "max_tokens": 10, "messages": [_user(long)]})
    assert reply["stop_reason"] == "max_tokens"
    assert reply["usage"]["output_tokens"] <= 10
    assert 0 < len(reply["content"][0]["text"]) <= 40
    assert long.startswith(reply["content"][0]["text"])
    # Scripted usage larger than max_tokens: capped too, and the tool call is not sent half-done.
    capped = await _post(http, "/v1/messages", {"model": "m", "max_tokens": 100, "messages": [_user("[script:expensive]")]})
    assert capped["stop_reason"] == "max_tokens"
    assert capped["usage"]["output_tokens"] == 100
    assert all(block["type"] == "text" for block in capped["content"])


async def test_streamed_reply_is_truncated_by_max_tokens_too(http: httpx.AsyncClient) -> None:
    body = {"model": "m", "max_tokens": 5, "stream": True, "messages": [_user("x" * 400)]}
    async with http.stream("POST", "/v1/messages", json=body) as response:
        text = (await response.aread()).decode()
    assert '"stop_reason":"max_tokens"' in text
    assert '"output_tokens":5' in text


async def test_delays_hold_back_the_first_byte_and_the_chunks(tmp_path: Path) -> None:
    script = parse_script('chunk_chars = 2\n[[turns]]\ntext = "abcdefgh"\ndelay_ms = 150\nchunk_delay_ms = 50\n', source="t")
    async with ScriptedModelServer(script) as server, httpx.AsyncClient(base_url=server.url) as http:
        loop = asyncio.get_running_loop()
        started = loop.time()
        body = {"model": "m", "max_tokens": 100, "stream": True, "messages": [_user("x")]}
        arrivals = []
        async with http.stream("POST", "/v1/messages", json=body) as response:
            async for _ in response.aiter_raw():
                arrivals.append(loop.time() - started)
    assert arrivals[0] >= 0.15
    assert arrivals[-1] - arrivals[0] >= 4 * 0.05  # four text chunks, 50 ms apart at least


async def test_replies_are_deterministic(http: httpx.AsyncClient) -> None:
    body = {"model": "m", "max_tokens": 1000, "messages": [_user("[script:demo] go")]}
    assert await _post(http, "/v1/messages", body) == await _post(http, "/v1/messages", body)


async def test_two_hundred_concurrent_conversations_get_their_own_replies(tmp_path: Path) -> None:
    async with ScriptedModelServer(CONVERSATION, log_path=tmp_path / "log.jsonl") as server:
        limits = httpx2.Limits(max_connections=200, max_keepalive_connections=200)
        http = httpx2.AsyncClient(limits=limits, timeout=60)
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key="k", max_retries=0, http_client=http)

        async def converse(n: int) -> tuple[str, str]:
            prompt = f"conversation-{n}"
            messages: list[Any] = [_user(prompt)]
            if n % 2:
                async with client.messages.stream(model="m", max_tokens=500, messages=messages) as stream:
                    first = await stream.get_final_message()
            else:
                first = await client.messages.create(model="m", max_tokens=500, messages=messages)
            tool = first.content[1]
            assert tool.type == "tool_use"
            messages += [
                {"role": "assistant", "content": [b.model_dump() for b in first.content]},
                _tool_result(tool.id, prompt),
            ]
            final = await client.messages.create(model="m", max_tokens=500, messages=messages)
            assert final.content[0].type == "text"
            return tool.input["command"], final.content[0].text

        async with asyncio.timeout(120):
            results = await asyncio.gather(*(converse(n) for n in range(200)))
        await client.close()
    for n, (command, final) in enumerate(results):
        assert command == f"echo conversation-{n}"
        assert final == f"finished conversation-{n} at reply 1"
    log = read_log(tmp_path / "log.jsonl")
    assert len(log) == 400
    assert sorted(r["turn"] for r in log) == [0] * 200 + [1] * 200
