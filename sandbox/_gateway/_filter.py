"""Rewriting a Messages API request before it goes upstream.

- ``decode_body``: the JSON body as a dict (a clear 400 when it is not a JSON object).
- ``check_model``: the model must be one of ``policy.models`` (exact match: the server
  resolved a profile's ``*`` into the concrete models when it made the policy).
- ``filter_tools``: tool definitions the policy's tool grants do not offer are removed
  (``bus.tool_offered``: ``Bash(ls:*)`` offers ``Bash``, old names compare as their new
  ones, ``mcp__x__*`` covers every ``mcp__x__...`` name; None allows every tool). This
  covers client tools, server
  tools (``web_search``, ``code_execution``, ... are matched by their ``name``) and MCP
  tools (Claude Code names them ``mcp__<server>__<tool>``). A ``tool_choice`` that names
  a removed tool, or asks for ``any`` tool when none is left, is removed too (the model
  then chooses freely among what is left).
- ``lower_max_tokens``: sets the granted ``max_tokens``; an extended-thinking budget that
  no longer fits below it is lowered, or thinking is disabled when less than the API's
  minimum budget (1,024 tokens) would be left.
- ``count_tokens_body``: the subset of a request that ``/v1/messages/count_tokens`` accepts.
"""

from __future__ import annotations

from typing import Any

import msgspec

from bus import InvalidInput, Policy, PolicyDenied, tool_offered

__all__ = [
    "COUNT_TOKENS_FIELDS",
    "check_model",
    "count_tokens_body",
    "decode_body",
    "encode_body",
    "filter_tools",
    "lower_max_tokens",
    "requested_max_tokens",
]

COUNT_TOKENS_FIELDS = ("model", "messages", "system", "tools", "tool_choice", "thinking")
MIN_THINKING_BUDGET = 1024

_decode = msgspec.json.Decoder().decode
encode_body = msgspec.json.Encoder().encode


def decode_body(raw: bytes) -> dict[str, Any]:
    try:
        body = _decode(raw)
    except msgspec.DecodeError as exc:
        raise InvalidInput(f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise InvalidInput("request body must be a JSON object")
    return body


def check_model(body: dict[str, Any], policy: Policy) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidInput("model: a model name (string) is required")
    if model not in policy.models:
        shown = model if len(model) <= 100 else model[:100] + "..."
        raise PolicyDenied(
            f"model {shown!r} is not allowed for this task; allowed: {', '.join(policy.models) or 'none'}",
            model=shown,
        )
    return model


def filter_tools(body: dict[str, Any], allowed: frozenset[str] | None) -> list[str]:
    """Remove tool definitions ``allowed`` (a policy's tool grants) does not offer (None:
    all allowed); returns removed names."""
    tools = body.get("tools")
    if allowed is None or not isinstance(tools, list) or not tools:
        return []
    kept: list[Any] = []
    dropped: list[str] = []
    for tool in tools:
        name = tool.get("name") if isinstance(tool, dict) else None
        if isinstance(name, str) and tool_offered(allowed, name):
            kept.append(tool)
        else:
            dropped.append(name[:64] if isinstance(name, str) else "<unnamed>")
    if not dropped:
        return []
    body["tools"] = kept
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        kind = choice.get("type")
        chosen = choice.get("name")
        if (kind == "tool" and not (isinstance(chosen, str) and tool_offered(allowed, chosen))) or (kind == "any" and not kept):
            del body["tool_choice"]
    return dropped


def requested_max_tokens(body: dict[str, Any]) -> int:
    value = body.get("max_tokens")
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise InvalidInput("max_tokens: a positive integer is required")
    return value


def lower_max_tokens(body: dict[str, Any], granted: int) -> None:
    if body.get("max_tokens") == granted:
        return
    body["max_tokens"] = granted
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "enabled":
        budget = thinking.get("budget_tokens")
        if isinstance(budget, int) and budget >= granted:
            if granted - 1 >= MIN_THINKING_BUDGET:
                body["thinking"] = {**thinking, "budget_tokens": granted - 1}
            else:
                body["thinking"] = {"type": "disabled"}


def count_tokens_body(body: dict[str, Any]) -> dict[str, Any]:
    return {key: body[key] for key in COUNT_TOKENS_FIELDS if key in body}
