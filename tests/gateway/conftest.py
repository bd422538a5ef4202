"""Helpers for gateway tests: a real scripted model server that requires a key only
the gateway knows, a real gateway on a unix socket, and an httpx client on that socket."""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from bus import Policy, Settings
from sandbox._gateway import (
    CallRecord,
    ModelGateway,
    SecurityNotice,
    new_placeholder_key,
)
from sandbox._scripted import Script, ScriptedModelServer, parse_script

MODEL = "claude-sonnet-4-6"


def script(text: str) -> Script:
    return parse_script(text, source="test")


def make_policy(**overrides: Any) -> Policy:
    values: dict[str, Any] = {
        "task_id": "t-" + secrets.token_hex(4),
        "kind": "task",
        "key_id": "tb_test",
        "profile": "test",
        "model": MODEL,
        "models": [MODEL],
        "tools": ["Bash", "Read"],
        "max_cost_usd": 1.0,
    }
    values.update(overrides)
    return Policy(**values)


@dataclass
class Stack:
    model: ScriptedModelServer
    gateway: ModelGateway
    client: httpx.AsyncClient
    placeholder: str
    real_key: str
    socket_path: Path
    calls: list[CallRecord] = field(default_factory=list)
    notices: list[SecurityNotice] = field(default_factory=list)

    @property
    def auth(self) -> dict[str, str]:
        return {"x-api-key": self.placeholder, "anthropic-version": "2023-06-01"}

    def upstream_requests(self, path: str = "/v1/messages") -> list[dict[str, Any]]:
        return [r for r in self.model.requests() if r["path"] == path]


@contextlib.asynccontextmanager
async def open_stack(
    tmp_path: Path,
    model_script: Script | str | None = "hello",
    *,
    settings: dict[str, Any] | None = None,
    **policy: Any,
) -> AsyncIterator[Stack]:
    real_key = "sk-ant-api03-" + secrets.token_urlsafe(24)
    socket_path = tmp_path / "run" / "model.sock"
    async with ScriptedModelServer(model_script, log_path=tmp_path / "model.jsonl", required_api_key=real_key) as model:
        loaded = Settings.load({}, data_dir=str(tmp_path / "data"), upstream_url=model.url, upstream_api_key=real_key, **(settings or {}))
        placeholder = new_placeholder_key()
        stack_calls: list[CallRecord] = []
        stack_notices: list[SecurityNotice] = []
        async with ModelGateway(
            loaded,
            make_policy(**policy),
            socket_path,
            placeholder,
            on_call=stack_calls.append,
            on_security=stack_notices.append,
        ) as gateway:
            transport = httpx.AsyncHTTPTransport(uds=str(socket_path))
            async with httpx.AsyncClient(transport=transport, base_url="http://gateway", timeout=30) as client:
                yield Stack(model, gateway, client, placeholder, real_key, socket_path, stack_calls, stack_notices)


def body(text: str = "hi", *, stream: bool = False, max_tokens: int = 1000, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
        "stream": stream,
        **extra,
    }


@pytest.fixture
def forwarder_path() -> Path:
    return Path(__file__).resolve().parents[2] / "sandbox" / "_forwarder.py"
