"""The gateway forwards only what it understands: request fields, beta flags, queries and
cache lifetimes outside its allowlist are refused (400, a ``request_refused`` notice) and
never reach the model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from sandbox._gateway._allow import KNOWN_BETAS

from .conftest import Stack, body, open_stack

# What Claude Code 2.1.197 sends on every call (recorded against the scripted model).
CLAUDE_CODE_BETAS = (
    "claude-code-20250219,interleaved-thinking-2025-05-14,thinking-token-count-2026-05-13,"
    "context-management-2025-06-27,prompt-caching-scope-2026-01-05,effort-2025-11-24"
)
CLAUDE_CODE_FIELDS: dict[str, Any] = {
    "system": [{"type": "text", "text": "You are Claude Code.", "cache_control": {"type": "ephemeral"}}],
    "metadata": {"user_id": '{"session_id":"x"}'},
    "thinking": {"type": "adaptive"},
    "context_management": {"edits": [{"type": "clear_thinking_20251015", "keep": "all"}]},
    "output_config": {"effort": "high"},
    "tools": [{"name": "Bash", "description": "run", "input_schema": {"type": "object"}}],
}


def _refused(stack: Stack, response: Any, fragment: str) -> None:
    assert response.status_code == 400, response.text
    error = response.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert fragment in error["error"]["message"]
    notices = [n for n in stack.notices if n.kind == "request_refused"]
    assert notices and fragment in notices[-1].detail
    assert stack.upstream_requests() == [] and stack.upstream_requests("/v1/messages/count_tokens") == []


async def test_what_claude_code_sends_is_forwarded(tmp_path: Path) -> None:
    async with open_stack(tmp_path) as s:
        headers = {**s.auth, "anthropic-beta": CLAUDE_CODE_BETAS + ",mid-conversation-system-2026-04-07"}
        response = await s.client.post("/v1/messages?beta=true", json=body(stream=True, **CLAUDE_CODE_FIELDS), headers=headers)
        assert response.status_code == 200, response.text
        upstream = s.upstream_requests()
    assert len(upstream) == 1 and upstream[0]["headers"]["anthropic-beta"].startswith("claude-code-20250219")
    assert not [n for n in s.notices if n.kind == "request_refused"]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/count_tokens"])
async def test_mcp_servers_is_refused_and_never_reaches_the_model(tmp_path: Path, path: str) -> None:
    servers = [{"type": "url", "url": "https://attacker.example/mcp", "name": "x"}]
    async with open_stack(tmp_path) as s:
        response = await s.client.post(path, json=body(mcp_servers=servers), headers=s.auth)
        _refused(s, response, "'mcp_servers'")


@pytest.mark.parametrize("field", ["service_tier", "container", "speed", "inference_geo", "bogus"])
async def test_fields_the_meter_cannot_price_are_refused(tmp_path: Path, field: str) -> None:
    async with open_stack(tmp_path) as s:
        response = await s.client.post("/v1/messages", json=body(**{field: "x"}), headers=s.auth)
        _refused(s, response, repr(field))


async def test_an_unknown_beta_flag_is_refused_even_among_known_ones(tmp_path: Path) -> None:
    async with open_stack(tmp_path) as s:
        headers = {**s.auth, "anthropic-beta": CLAUDE_CODE_BETAS + ", context-1m-2025-08-07"}
        response = await s.client.post("/v1/messages", json=body(), headers=headers)
        _refused(s, response, "'context-1m-2025-08-07'")


async def test_a_beta_flag_listed_in_the_settings_is_forwarded(tmp_path: Path) -> None:
    assert "files-api-2025-04-14" not in KNOWN_BETAS
    async with open_stack(tmp_path, settings={"gateway_extra_betas": ["files-api-2025-04-14"]}) as s:
        headers = {**s.auth, "anthropic-beta": "files-api-2025-04-14"}
        response = await s.client.post("/v1/messages", json=body(), headers=headers)
        assert response.status_code == 200, response.text
        assert s.upstream_requests()[0]["headers"]["anthropic-beta"] == "files-api-2025-04-14"


async def test_one_hour_cache_writes_are_refused(tmp_path: Path) -> None:
    message = {"role": "user", "content": [{"type": "text", "text": "hi", "cache_control": {"type": "ephemeral", "ttl": "1h"}}]}
    async with open_stack(tmp_path) as s:
        response = await s.client.post("/v1/messages", json={**body(), "messages": [message]}, headers=s.auth)
        _refused(s, response, "'1h'")


async def test_an_unknown_query_is_refused(tmp_path: Path) -> None:
    async with open_stack(tmp_path) as s:
        response = await s.client.post("/v1/messages?beta=true&x=1", json=body(), headers=s.auth)
        _refused(s, response, "query")


async def test_refusals_need_the_placeholder_first(tmp_path: Path) -> None:
    # Without the credential the answer is a 401, whatever else is wrong with the request.
    async with open_stack(tmp_path) as s:
        response = await s.client.post("/v1/messages", json=body(mcp_servers=[]), headers={"x-api-key": "nope" * 8})
        assert response.status_code == 401
        assert [n.kind for n in s.notices] == ["bad_placeholder"]
