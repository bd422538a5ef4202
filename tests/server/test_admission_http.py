"""The HTTP 401 body says which of missing, unknown, revoked or expired the key was (#16.9a)."""

from __future__ import annotations

from datetime import timedelta

import httpx2
from test_http import http_server

from bus import Settings
from profiles import Store

INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


async def _refusal(url: str, authorization: str | None) -> tuple[int, dict, str]:
    headers = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    if authorization is not None:
        headers["Authorization"] = authorization
    async with httpx2.AsyncClient() as http:
        response = await http.post(url, json=INIT, headers=headers)
    return response.status_code, response.json(), response.headers.get("www-authenticate", "")


async def test_a_401_says_why_without_revealing_other_keys(settings: Settings) -> None:
    async with Store.for_settings(settings) as store:
        revoked, revoked_record = await store.create_key("developer")
        await store.revoke(revoked_record.prefix)
        real_now = store.now()
        store.now = lambda: real_now - timedelta(days=1)  # type: ignore[method-assign]
        expired, _ = await store.create_key("developer", expires_at=real_now - timedelta(hours=1))
    async with http_server(settings) as url:
        status, body, www = await _refusal(url, None)
        assert status == 401 and body["code"] == "unauthorized" and "no API key" in body["error_description"]
        assert body["error"] == "invalid_token" and 'error="invalid_token"' in www
        status, body, _ = await _refusal(url, "Basic dXNlcjpwYXNz")
        assert status == 401 and "no API key" in body["error_description"]
        unknown = "tb_" + "n" * 43
        status, body, _ = await _refusal(url, f"Bearer {unknown}")
        assert status == 401 and body["code"] == "unauthorized" and "unknown API key" in body["error_description"]
        assert unknown not in body["error_description"] and "profile" not in body["error_description"]
        status, body, _ = await _refusal(url, f"Bearer {revoked}")
        assert status == 401 and body["code"] == "key_revoked" and "revoked" in body["error_description"]
        assert revoked not in str(body)
        status, body, _ = await _refusal(url, f"Bearer {expired}")
        assert status == 401 and body["code"] == "key_expired" and "expired" in body["error_description"]
