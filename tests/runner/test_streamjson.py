"""Claude Code's stream-json, read by the one parser: tolerant of what Claude Code adds,
strict where taskbus relies on a field, and nothing from the stream becomes a security
event or crashes the reader."""

from __future__ import annotations

import json

from bus import Log, Message, ToolCall, ToolResult
from sandbox._runner._claude import ClaudeOutcome, translate
from sandbox._runner._streamjson import (
    AssistantLine,
    ResultLine,
    StreamEventLine,
    SystemLine,
    Unrecognized,
    blocks,
    parse_line,
)


def test_unknown_fields_and_block_types_are_ignored_not_refused() -> None:
    line = json.dumps(
        {
            "type": "assistant",
            "uuid": "u1",
            "session_id": "s",
            "future_field": {"a": 1},
            "message": {
                "id": "m",
                "content": [
                    {"type": "thinking", "thinking": "hmm", "signature": "x"},
                    {"type": "text", "text": "hello", "citations": None},
                    {"type": "tool_use", "id": "t1", "name": "Bash", "input": {"command": "ls"}, "caller": {}},
                ],
            },
        }
    )
    parsed = parse_line(line)
    assert isinstance(parsed, AssistantLine)
    assert [b.type for b in blocks(parsed)] == ["thinking", "text", "tool_use"]
    assert blocks(parsed)[2].input == {"command": "ls"}


def test_a_line_of_an_unknown_type_or_not_json_is_unrecognized() -> None:
    assert parse_line('{"type": "rate_limit_event", "x": 1}') == Unrecognized(json=True)
    assert parse_line("[1, 2]") == Unrecognized(json=True)
    assert parse_line("Loading...") == Unrecognized(json=False)
    assert parse_line("") == Unrecognized(json=False)


def test_a_known_line_with_a_field_of_the_wrong_type_is_not_half_read() -> None:
    # a tool_use id that is a number, a turn count that is a string: the whole line is unrecognized
    bad_id = {"type": "assistant", "message": {"content": [{"type": "tool_use", "id": 7, "name": "Bash", "input": {}}]}}
    assert isinstance(parse_line(json.dumps(bad_id)), Unrecognized)
    assert isinstance(parse_line('{"type": "result", "num_turns": "3"}'), Unrecognized)
    outcome = ClaudeOutcome()
    assert [t for t, _ in translate('{"type": "result", "num_turns": "3"}', outcome)] == [Log]
    assert not outcome.seen_result, "a malformed result line does not end the task"


def test_the_lines_a_task_and_the_completion_provider_read() -> None:
    init = parse_line('{"type":"system","subtype":"init","claude_code_version":"2.1.197","model":"m","tools":["Task","Bash"]}')
    assert isinstance(init, SystemLine) and init.tools == ["Task", "Bash"]
    result = parse_line('{"type":"result","subtype":"success","is_error":false,"result":"done","num_turns":2,"total_cost_usd":1}')
    assert isinstance(result, ResultLine) and (result.result, result.num_turns, result.is_error) == ("done", 2, False)
    delta = parse_line('{"type":"stream_event","event":{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hi"}}}')
    assert isinstance(delta, StreamEventLine) and delta.event is not None and delta.event.delta is not None
    assert (delta.event.delta.type, delta.event.delta.text) == ("text_delta", "Hi")
    start = parse_line('{"type":"stream_event","event":{"type":"message_start","message":{"id":"x"}}}')
    assert isinstance(start, StreamEventLine) and start.event is not None and start.event.delta is None


def test_translate_makes_the_task_events() -> None:
    outcome = ClaudeOutcome()
    lines = [
        {
            "type": "assistant",
            "message": {
                "content": [
                    {"type": "text", "text": "working"},
                    {"type": "tool_use", "id": "a1", "name": "Agent", "input": {"subagent_type": "reviewer"}},
                ]
            },
        },
        {
            "type": "assistant",
            "parent_tool_use_id": "a1",
            "message": {
                "content": [
                    {"type": "tool_use", "id": "b1", "name": "Read", "input": "not an object"},
                ]
            },
        },
        {
            "type": "user",
            "parent_tool_use_id": "a1",
            "message": {
                "content": [
                    {"type": "tool_result", "tool_use_id": "b1", "is_error": True, "content": [{"type": "text", "text": "nope"}]},
                ]
            },
        },
        {"type": "user", "message": {"content": "the prompt, echoed"}},
        {"type": "result", "subtype": "success", "result": "all done", "num_turns": 4},
    ]
    produced = [pair for line in lines for pair in translate(json.dumps(line), outcome)]
    assert [t for t, _ in produced] == [Message, ToolCall, ToolCall, ToolResult]
    spawn, inner, result = produced[1][1], produced[2][1], produced[3][1]
    assert spawn["invokes"] == "agent:reviewer" and spawn["agent"] == ""
    assert inner["parent_id"] == "a1" and inner["agent"] == "reviewer" and inner["input"] == {}
    assert result == {"id": "b1", "is_error": True, "output": "nope", "parent_id": "a1"}
    assert outcome.seen_result and outcome.result == "all done" and outcome.turns == 4
