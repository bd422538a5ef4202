"""``/metrics`` of the server and of a runner parse as Prometheus text and move as real
tasks run: a real ``complete`` and a real bwrap ``run_task`` through MCP over HTTP, the
real Claude Code CLI, the scripted model."""

from __future__ import annotations

from pathlib import Path

import httpx2
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from prometheus_client.parser import text_string_to_metric_families
from stack_kit import e2e_ready, http_stack

from bus import Settings
from profiles import Store

WRITE_A_FILE = "[script:write-a-file] Write hello.txt saying hello."


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, frozenset(s.labels.items()))] = s.value
    return out


def value(found: dict, name: str, **labels: str) -> float:
    """Sum of the samples named ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in found.items() if n == name and want <= ls)


async def scrape(url: str) -> dict:
    async with httpx2.AsyncClient() as http:
        response = await http.get(url)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


async def test_server_and_runner_metrics_move_as_real_tasks_run(settings: Settings, tmp_path: Path, require_bwrap, require_claude) -> None:
    settings = e2e_ready(settings, require_claude)
    async with Store.for_settings(settings) as store:
        key, _ = await store.create_key("developer")
    async with http_stack(settings) as stack:
        server_url = f"{stack.base}/metrics"
        runner_url = f"http://127.0.0.1:{stack.runner.metrics_port}/metrics"
        before = await scrape(server_url)
        assert value(before, "taskbus_tasks_finished_total") == 0
        assert value(before, "taskbus_bus_scrape_ok") == 1
        assert ("taskbus_stream_messages", frozenset({("stream", settings.subject_prefix.upper() + "_JOBS")})) in before
        runner_before = await scrape(runner_url)
        assert value(runner_before, "taskbus_sandbox_create_duration_seconds_count") == 0

        async with httpx2.AsyncClient() as http:  # an unknown key: 401, counted as an auth failure
            refused = await http.post(f"{stack.base}/mcp", json={}, headers={"Authorization": "Bearer tb_" + "n" * 43})
            assert refused.status_code == 401
        async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {key}"}, timeout=120) as http:
            async with Client(streamable_http_client(f"{stack.base}/mcp", http_client=http)) as client:
                done = await client.call_tool("complete", {"prompt": "Echo this back", "model": "claude-haiku-4-5"})
                assert not done.is_error
                task = await client.call_tool("run_task", {"description": WRITE_A_FILE})
                assert not task.is_error and task.structured_content["status"] == "succeeded"
                cost = done.structured_content["cost_usd"] + task.structured_content["cost_usd"]

        after = await scrape(server_url)
        assert value(after, "taskbus_admissions_total", kind="complete", outcome="accepted") == 1
        assert value(after, "taskbus_admissions_total", kind="task", outcome="accepted") == 1
        assert value(after, "taskbus_admission_duration_seconds_count") == 2
        assert value(after, "taskbus_tasks_finished_total", kind="complete", status="succeeded") == 1
        assert value(after, "taskbus_tasks_finished_total", kind="task", status="succeeded") == 1
        assert value(after, "taskbus_task_duration_seconds_count", kind="task") == 1
        assert value(after, "taskbus_task_duration_seconds_sum", kind="task") > 0
        assert abs(value(after, "taskbus_spend_usd_total", profile="developer") - cost) < 1e-6
        assert value(after, "taskbus_model_tokens_total", model="claude-haiku-4-5", type="output") > 0
        assert value(after, "taskbus_denials_total", kind="auth_failure") >= 1

        runner = await scrape(runner_url)
        assert value(runner, "taskbus_runner_info", backend="bwrap") == 1
        assert value(runner, "taskbus_sandbox_create_duration_seconds_count", backend="bwrap") == 1
        assert value(runner, "taskbus_sandbox_destroy_duration_seconds_count", backend="bwrap") == 1
        assert value(runner, "taskbus_gateway_calls_total", model="claude-haiku-4-5") >= 1
        assert value(runner, "taskbus_gateway_calls_total") >= 2
        assert value(runner, "taskbus_gateway_tokens_total", type="output") > 0
        assert value(runner, "taskbus_runner_tasks_finished_total", status="succeeded") == 2
        assert value(runner, "taskbus_warm_pool_sandboxes", backend="bwrap") == 0
