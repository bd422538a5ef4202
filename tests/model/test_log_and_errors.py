"""The request log shows what the model saw, without secrets; bad requests never crash the server."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from sandbox._scripted import ScriptedModelServer


@pytest.fixture
async def http(model: ScriptedModelServer) -> Any:
    async with httpx.AsyncClient(base_url=model.url, timeout=30) as client:
        yield client


async def test_log_records_tools_offered_marker_turn_and_tokens_without_secrets(
    http: httpx.AsyncClient, model: ScriptedModelServer
) -> None:
    body = {
        "model": "claude-haiku-4-5",
        "max_tokens": 500,
        "tools": [{"name": "Read", "input_schema": {}}, {"name": "Bash", "input_schema": {}}],
        "messages": [{"role": "user", "content": "[script:hello] my key is sk-ant-api03-abcdefghijklmnop"}],
    }
    headers = {
        "x-api-key": "sk-ant-secret-header-value",
        "authorization": "Bearer tb_abcdefghijklmnopqrstuvwxyz",
        "anthropic-version": "2023-06-01",
    }
    reply = (await http.post("/v1/messages?beta=true", json=body, headers=headers)).json()
    [record] = model.requests()
    assert record["tools"] == ["Read", "Bash"]
    assert (record["marker"], record["script"], record["turn"], record["reply"]) == ("hello", "hello", 0, 0)
    assert record["model"] == "claude-haiku-4-5" and record["status"] == 200
    assert record["input_tokens"] == reply["usage"]["input_tokens"]
    assert record["output_tokens"] == reply["usage"]["output_tokens"]
    assert record["headers"]["anthropic-version"] == "2023-06-01"
    assert record["headers"]["x-api-key"] == "[REDACTED]" and record["headers"]["authorization"] == "[REDACTED]"
    text = model.log_path.read_text()  # type: ignore[union-attr]
    for secret in ("sk-ant-secret-header-value", "tb_abcdefghijklmnopqrstuvwxyz", "sk-ant-api03-abcdefghijklmnop"):
        assert secret not in text


@pytest.mark.parametrize(
    ("method", "path", "body", "status", "error_type"),
    [
        ("POST", "/v1/messages", b"{not json", 400, "invalid_request_error"),
        ("POST", "/v1/messages", b'{"model": "m", "max_tokens": 5, "messages": []}', 400, "invalid_request_error"),
        ("POST", "/v1/messages", b'{"model": "m", "max_tokens": "five", "messages": []}', 400, "invalid_request_error"),
        ("POST", "/v1/messages/count_tokens", b'{"messages": []}', 400, "invalid_request_error"),
        ("GET", "/v1/messages", b"", 404, "not_found_error"),
        ("POST", "/v2/anything", b"{}", 404, "not_found_error"),
    ],
)
async def test_bad_requests_get_anthropic_shaped_errors(
    http: httpx.AsyncClient, method: str, path: str, body: bytes, status: int, error_type: str
) -> None:
    response = await http.request(method, path, content=body, headers={"content-type": "application/json"})
    assert response.status_code == status
    assert response.json()["type"] == "error"
    assert response.json()["error"]["type"] == error_type
    assert response.json()["error"]["message"]
    # ...and the server still answers afterwards.
    ok = await http.post("/v1/messages", json={"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "x"}]})
    assert ok.status_code == 200


async def test_health_check_answers_head_and_get(http: httpx.AsyncClient) -> None:
    assert (await http.head("/")).status_code == 200
    assert (await http.get("/")).json() == {"ok": True}


async def test_oversized_body_is_refused_with_413(http: httpx.AsyncClient) -> None:
    response = await http.post("/v1/messages", content=b"x" * (33 * 1024 * 1024))
    assert response.status_code == 413
    assert response.json()["error"]["type"] == "request_too_large"
