"""The official ``anthropic`` SDK talks to the scripted model server like to the real API."""

from __future__ import annotations

from pathlib import Path

import anthropic
import pytest

from sandbox._scripted import ScriptedModelServer, parse_script

API_KEY = "sk-ant-test-0123456789abcdef"

ERRORS = parse_script(
    """
name = "errors"
[[turns]]
at = "any"
contains = "e400"
error = { status = 400, message = "scripted bad request" }
[[turns]]
at = "any"
contains = "e401"
error = { status = 401, message = "scripted bad key" }
[[turns]]
at = "any"
contains = "e429"
error = { status = 429, message = "slow down", retry_after = 7 }
[[turns]]
at = "any"
contains = "e529"
error = { status = 529, message = "scripted overload" }
[[turns]]
at = "any"
contains = "e500"
error = { status = 500, message = "scripted failure" }
""",
    source="errors",
)


async def test_sdk_gets_a_scripted_text_reply_without_streaming(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model="claude-sonnet-4-6", max_tokens=100, messages=[{"role": "user", "content": "hi [script:hello]"}]
    )
    assert message.content[0].type == "text"
    assert message.content[0].text == "Hello from the scripted model."
    assert message.model == "claude-sonnet-4-6"
    assert message.stop_reason == "end_turn"
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


async def test_sdk_streams_text_and_tool_use_deltas(client: anthropic.AsyncAnthropic) -> None:
    events = []
    async with client.messages.stream(
        model="claude-opus-4-8",
        max_tokens=1000,
        messages=[{"role": "user", "content": "[script:write-a-file] please"}],
    ) as stream:
        async for event in stream:
            events.append(event.type)
        message = await stream.get_final_message()
    assert events[0] == "message_start"
    assert "content_block_delta" in events and events[-1] == "message_stop"
    assert [b.type for b in message.content] == ["text", "tool_use"]
    tool = message.content[1]
    assert tool.type == "tool_use" and tool.name == "Bash"
    assert "hello.txt" in tool.input["command"]
    assert message.stop_reason == "tool_use"


async def test_streamed_and_plain_replies_carry_the_same_message(client: anthropic.AsyncAnthropic) -> None:
    request = {
        "model": "claude-opus-4-8",
        "max_tokens": 1000,
        "messages": [{"role": "user", "content": "[script:multi-step] go"}],
    }
    plain = await client.messages.create(**request)
    async with client.messages.stream(**request) as stream:
        streamed = await stream.get_final_message()
    assert streamed.model_dump() == plain.model_dump()


async def test_count_tokens_counts_the_whole_prompt_the_reply_reports(client: anthropic.AsyncAnthropic) -> None:
    """Like the real API: count_tokens is input + cache-write + cache-read tokens of the reply."""
    counted = {}
    for marker in ("hello", "expensive", "multi-step"):
        request = {
            "model": "claude-opus-4-8",
            "messages": [{"role": "user", "content": f"[script:{marker}] some prompt text " * 20}],
            "system": "You are a test.",
            "tools": [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}],
        }
        counted[marker] = (await client.messages.count_tokens(**request)).input_tokens
        message = await client.messages.create(max_tokens=20000, **request)
        u = message.usage
        assert counted[marker] == u.input_tokens + (u.cache_creation_input_tokens or 0) + (u.cache_read_input_tokens or 0), marker
    assert counted["expensive"] == 180000 + 20000 + 50000  # scripted usage
    assert 100 < counted["hello"] < 1000  # estimated from the request bytes


async def test_scripted_usage_is_reported_including_cache_tokens(client: anthropic.AsyncAnthropic) -> None:
    message = await client.messages.create(
        model="claude-opus-4-8", max_tokens=20000, messages=[{"role": "user", "content": "[script:expensive]"}]
    )
    usage = message.usage
    assert (usage.input_tokens, usage.output_tokens) == (180000, 8000)
    assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (20000, 50000)


async def test_models_endpoint_lists_the_scripted_models(client: anthropic.AsyncAnthropic) -> None:
    page = await client.models.list()
    assert [m.id for m in page.data] == ["claude-scripted"]
    model = await client.models.retrieve("claude-scripted")
    assert model.id == "claude-scripted"
    with pytest.raises(anthropic.NotFoundError):
        await client.models.retrieve("no-such-model")


@pytest.mark.parametrize(
    ("trigger", "exception", "status", "error_type"),
    [
        ("e400", anthropic.BadRequestError, 400, "invalid_request_error"),
        ("e401", anthropic.AuthenticationError, 401, "authentication_error"),
        ("e429", anthropic.RateLimitError, 429, "rate_limit_error"),
        ("e529", anthropic.OverloadedError, 529, "overloaded_error"),
        ("e500", anthropic.InternalServerError, 500, "api_error"),
    ],
)
@pytest.mark.parametrize("stream", [False, True])
async def test_sdk_parses_every_scripted_error(
    tmp_path: Path, trigger: str, exception: type[anthropic.APIStatusError], status: int, error_type: str, stream: bool
) -> None:
    async with ScriptedModelServer(ERRORS) as server:
        client = anthropic.AsyncAnthropic(base_url=server.url, api_key=API_KEY, max_retries=0)
        with pytest.raises(exception) as caught:
            await client.messages.create(
                model="m", max_tokens=10, stream=stream, messages=[{"role": "user", "content": f"please {trigger}"}]
            )
        await client.close()
    assert caught.value.status_code == status
    assert caught.value.body["error"]["type"] == error_type
    assert caught.value.body["type"] == "error"
    if status == 429:
        assert caught.value.response.headers["retry-after"] == "7"


async def test_missing_or_wrong_api_key_gets_401_and_the_right_key_gets_through(tmp_path: Path) -> None:
    async with ScriptedModelServer("hello", required_api_key="sk-ant-the-real-one") as server:
        wrong = anthropic.AsyncAnthropic(base_url=server.url, api_key="sk-ant-placeholder", max_retries=0)
        with pytest.raises(anthropic.AuthenticationError) as caught:
            await wrong.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        assert caught.value.body["error"]["type"] == "authentication_error"
        assert "sk-ant" not in caught.value.body["error"]["message"]
        bearer = anthropic.AsyncAnthropic(base_url=server.url, auth_token="sk-ant-the-real-one", max_retries=0)
        message = await bearer.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "hi"}])
        assert message.content[0].text == "Hello from the scripted model."
        await wrong.close()
        await bearer.close()


async def test_invalid_request_gets_a_400_naming_the_field(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(model="m", max_tokens=10, messages=[{"role": "user"}])  # type: ignore[typeddict-item]
    assert "$.messages[0]" in caught.value.body["error"]["message"]
    assert "content" in caught.value.body["error"]["message"]


async def test_unknown_script_marker_is_a_400_listing_the_known_scripts(client: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as caught:
        await client.messages.create(model="m", max_tokens=10, messages=[{"role": "user", "content": "[script:nope]"}])
    message = caught.value.body["error"]["message"]
    assert "[script:nope]" in message and "write-a-file" in message
