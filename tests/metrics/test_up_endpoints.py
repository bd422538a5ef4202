"""`taskbus up` turns the runner's metrics on at a free loopback port and shows where the
console and both metrics endpoints are (the console only when it is served)."""

from __future__ import annotations

import msgspec
from stack_kit import free_port

from bus import Settings
from cli._up._firstrun import FirstRun
from cli._up._panel import stack_info
from cli._up._plan import make_plan


def _plan(settings: Settings, **changes):
    return make_plan(msgspec.structs.replace(settings, **changes), {}, http_port=free_port(), backend="bwrap")


def test_up_serves_runner_metrics_on_a_free_loopback_port_and_lists_the_urls(settings: Settings) -> None:
    plan = _plan(settings)
    runner = next(s for s in plan.specs if s.name == "runner")
    port = int(runner.env["TASKBUS_RUNNER_METRICS_PORT"])
    assert port > 0 and port == plan.runner_metrics_port
    assert "TASKBUS_RUNNER_METRICS_PORT" not in next(s for s in plan.specs if s.name == "server").env
    info = stack_info(plan, FirstRun(created_data_dir=False, admin_key=None, admin_prefix="tb_x", notices=[]))
    assert info["console_url"] == f"http://127.0.0.1:{plan.http_port}/console"
    assert info["metrics_url"] == f"http://127.0.0.1:{plan.http_port}/metrics"
    assert info["runner_metrics_url"] == f"http://127.0.0.1:{port}/metrics"


def test_the_console_url_is_not_shown_when_the_server_binds_beyond_loopback(settings: Settings) -> None:
    first = FirstRun(created_data_dir=False, admin_key=None, admin_prefix="tb_x", notices=[])
    assert stack_info(_plan(settings, http_host="0.0.0.0"), first)["console_url"] == ""
    assert stack_info(_plan(settings, http_host="0.0.0.0", console="on"), first)["console_url"].endswith("/console")
