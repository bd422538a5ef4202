"""Reading usage from SSE streams, and rewriting requests (no network)."""

from __future__ import annotations

import itertools
import json

from hypothesis import given
from hypothesis import strategies as st

from bus import InvalidInput, PolicyDenied, Usage
from sandbox._gateway import SseUsageReader
from sandbox._gateway._filter import (
    check_model,
    count_tokens_body,
    filter_tools,
    lower_max_tokens,
)
from sandbox._gateway._sse import read_json_message

from .conftest import make_policy


def sse(*events: dict) -> bytes:
    return b"".join(f"event: {e['type']}\ndata: {json.dumps(e)}\n\n".encode() for e in events)


STREAM = sse(
    {
        "type": "message_start",
        "message": {
            "id": "m",
            "model": "claude-x",
            "usage": {"input_tokens": 120, "output_tokens": 1, "cache_creation_input_tokens": 30, "cache_read_input_tokens": 400},
        },
    },
    {"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
    {"type": "ping"},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "Hel"}},
    {"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": "lo ✓"}},
    {"type": "content_block_stop", "index": 0},
    {"type": "message_delta", "delta": {"stop_reason": "end_turn"}, "usage": {"output_tokens": 17}},
    {"type": "message_stop"},
)
EXPECTED = Usage(input_tokens=120, output_tokens=17, cache_creation_input_tokens=30, cache_read_input_tokens=400)


@given(cuts=st.lists(st.integers(0, len(STREAM)), max_size=12))
def test_usage_and_text_survive_any_split_of_the_stream(cuts: list[int]) -> None:
    texts: list[str] = []
    reader = SseUsageReader(on_text=texts.append)
    edges = [0, *sorted(cuts), len(STREAM)]
    for start, end in itertools.pairwise(edges):
        reader.feed(STREAM[start:end])
    assert reader.usage == EXPECTED
    assert reader.completed and reader.stop_reason == "end_turn" and reader.model == "claude-x"
    assert "".join(texts) == "Hello ✓"


def test_crlf_line_endings_are_read_too() -> None:
    reader = SseUsageReader()
    reader.feed(STREAM.replace(b"\n", b"\r\n"))
    assert reader.usage == EXPECTED and reader.completed


def test_a_stream_cut_before_message_stop_is_not_complete() -> None:
    reader = SseUsageReader()
    reader.feed(STREAM[: STREAM.index(b"event: message_delta")])
    assert not reader.completed
    assert reader.usage == Usage(input_tokens=120, output_tokens=1, cache_creation_input_tokens=30, cache_read_input_tokens=400)


def test_an_error_event_is_reported() -> None:
    reader = SseUsageReader()
    reader.feed(sse({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}))
    assert reader.error == "overloaded_error: Overloaded" and reader.usage is None


def test_usage_of_a_json_message() -> None:
    usage, stop, model = read_json_message(
        json.dumps(
            {
                "type": "message",
                "model": "m",
                "stop_reason": "tool_use",
                "usage": {"input_tokens": 5, "output_tokens": 7, "cache_creation_input_tokens": None},
            }
        ).encode()
    )
    assert usage == Usage(input_tokens=5, output_tokens=7) and stop == "tool_use" and model == "m"
    assert read_json_message(b"not json") == (None, None, None)


def test_tools_outside_the_policy_are_removed_with_a_tool_choice_naming_them() -> None:
    body = {
        "tools": [{"name": "Bash"}, {"name": "WebFetch"}, {"type": "web_search_20250305", "name": "web_search"}, {"nameless": True}],
        "tool_choice": {"type": "tool", "name": "WebFetch"},
    }
    dropped = filter_tools(body, frozenset({"Bash"}))
    assert dropped == ["WebFetch", "web_search", "<unnamed>"]
    assert body["tools"] == [{"name": "Bash"}]
    assert "tool_choice" not in body


def test_a_star_allows_every_tool_and_no_tools_is_fine() -> None:
    body = {"tools": [{"name": "Bash"}, {"name": "mcp__x__y"}]}
    assert filter_tools(body, None) == [] and len(body["tools"]) == 2
    assert filter_tools({}, frozenset()) == []


def test_only_the_policy_models_are_allowed() -> None:
    policy = make_policy(models=["claude-sonnet-4-6"])
    assert check_model({"model": "claude-sonnet-4-6"}, policy) == "claude-sonnet-4-6"
    try:
        check_model({"model": "claude-opus-4-8"}, policy)
    except PolicyDenied as exc:
        assert "claude-opus-4-8" in exc.message and "claude-sonnet-4-6" in exc.message
    else:
        raise AssertionError("opus was allowed")
    try:
        check_model({}, policy)
    except InvalidInput as exc:
        assert "model" in exc.message
    else:
        raise AssertionError("a request without a model was allowed")


def test_lowering_max_tokens_keeps_a_thinking_budget_valid() -> None:
    body = {"max_tokens": 32000, "thinking": {"type": "enabled", "budget_tokens": 16000}}
    lower_max_tokens(body, 5000)
    assert body == {"max_tokens": 5000, "thinking": {"type": "enabled", "budget_tokens": 4999}}
    lower_max_tokens(body, 800)
    assert body == {"max_tokens": 800, "thinking": {"type": "disabled"}}
    adaptive = {"max_tokens": 32000, "thinking": {"type": "adaptive"}}
    lower_max_tokens(adaptive, 100)
    assert adaptive["thinking"] == {"type": "adaptive"}


def test_count_tokens_gets_only_the_fields_it_accepts() -> None:
    body = {"model": "m", "messages": [], "max_tokens": 5, "stream": True, "metadata": {}, "tools": [], "system": "s"}
    assert count_tokens_body(body) == {"model": "m", "messages": [], "system": "s", "tools": []}


def test_untrusted_names_are_bounded_in_what_gets_reported() -> None:
    try:
        check_model({"model": "x" * 10_000 + "\nforged log line"}, make_policy())
    except PolicyDenied as exc:
        assert len(exc.message) < 300 and "\n" not in exc.message
    else:
        raise AssertionError("allowed")
    dropped = filter_tools({"tools": [{"name": "y" * 1000}]}, frozenset())
    assert dropped == ["y" * 64]
