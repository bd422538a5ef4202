"""``taskbus serve --transport stdio`` as a real subprocess, driven by the SDK's stdio client."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from mcp import Client, StdioServerParameters

from bus import Settings
from profiles import Store

ROOT = Path(__file__).resolve().parents[2]


def stdio_params(settings: Settings, key: str) -> StdioServerParameters:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TASKBUS_")}
    env.update(
        {
            "TASKBUS_NATS_URL": settings.nats_url,
            "TASKBUS_SUBJECT_PREFIX": settings.subject_prefix,
            "TASKBUS_DATA_DIR": settings.data_dir,
            "TASKBUS_JOB_SECRET": settings.job_secret,
            "TASKBUS_API_KEY": key,
            "TASKBUS_LOG_LEVEL": "warning",
        }
    )
    return StdioServerParameters(command=sys.executable, args=["-m", "cli", "serve", "--transport", "stdio"], cwd=str(ROOT), env=env)


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_stdio_server_acts_as_the_key_in_taskbus_api_key(settings: Settings, mode: str) -> None:
    async with Store.for_settings(settings) as store:
        key, record = await store.create_key("developer")
    async with Client(stdio_params(settings, key), mode=mode) as client:
        queued = await client.call_tool("run_task", {"description": "say hi", "wait": False})
        assert not queued.is_error, queued.content
        task_id = queued.structured_content["task_id"]
        status = await client.call_tool("get_task", {"task_id": task_id})
        assert status.structured_content["key_id"] == record.prefix
        assert not (await client.call_tool("cancel_task", {"task_id": task_id})).is_error
