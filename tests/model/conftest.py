"""Fixtures of the scripted model server tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import pytest

from sandbox._scripted import ScriptedModelServer

API_KEY = "sk-ant-test-0123456789abcdef"


@pytest.fixture
async def model(tmp_path: Path) -> AsyncIterator[ScriptedModelServer]:
    """A scripted model server (echo by default, shipped scripts by marker) with a request log."""
    async with ScriptedModelServer(log_path=tmp_path / "model.jsonl") as server:
        yield server


@pytest.fixture
async def client(model: ScriptedModelServer) -> AsyncIterator[anthropic.AsyncAnthropic]:
    sdk = anthropic.AsyncAnthropic(base_url=model.url, api_key=API_KEY, max_retries=0)
    try:
        yield sdk
    finally:
        await sdk.close()
