"""The CLI: ``taskbus submit`` over NATS to a real ``taskbus serve``, then ``tasks list|show|cancel --json``."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nats
from typer.testing import CliRunner

from bus import Settings
from cli import app
from profiles import Store

ROOT = Path(__file__).resolve().parents[2]


def _env(settings: Settings) -> dict[str, str]:
    return {
        "TASKBUS_NATS_URL": settings.nats_url,
        "TASKBUS_SUBJECT_PREFIX": settings.subject_prefix,
        "TASKBUS_DATA_DIR": settings.data_dir,
        "TASKBUS_JOB_SECRET": settings.job_secret,
    }


async def _wait_for_gateway(settings: Settings, deadline_s: float = 30) -> None:
    nc = await nats.connect(settings.nats_url)
    try:
        end = time.monotonic() + deadline_s
        while True:
            try:
                await nc.request(f"{settings.subject_prefix}.submit.task", b"{}", timeout=0.5)
                return
            except Exception:
                if time.monotonic() > end:
                    raise
    finally:
        await nc.drain()


def test_submit_list_show_and_cancel_round_trip_with_json(settings: Settings) -> None:
    async def make_key() -> str:
        async with Store.for_settings(settings) as store:
            return (await store.create_key("developer"))[0]

    key = asyncio.run(make_key())
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("TASKBUS_")}, **_env(settings)}
    server = subprocess.Popen(
        [sys.executable, "-m", "cli", "--log-level", "warning", "serve", "--transport", "none"],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        asyncio.run(_wait_for_gateway(settings))
        runner = CliRunner()
        result = runner.invoke(app, ["submit", "write hello.txt", "--no-wait", "--json", "--key", key], env=_env(settings))
        assert result.exit_code == 0, result.output
        task_id = json.loads(result.stdout)["task_id"]

        bad = runner.invoke(app, ["submit", "x", "--key", "tb_" + "q" * 43], env=_env(settings))
        assert bad.exit_code == 1 and "unauthorized" in bad.output and "qqqq" not in bad.output

        listed = json.loads(runner.invoke(app, ["tasks", "list", "--json"], env=_env(settings)).stdout)
        assert [t["task_id"] for t in listed["tasks"]] == [task_id]
        cancelled = runner.invoke(app, ["tasks", "cancel", task_id, "--json"], env=_env(settings))
        assert cancelled.exit_code == 0, cancelled.output
        deadline = time.monotonic() + 20
        while True:
            shown = json.loads(runner.invoke(app, ["tasks", "show", task_id, "--json"], env=_env(settings)).stdout)
            if shown["task"]["status"] == "cancelled" or time.monotonic() > deadline:
                break
        assert shown["task"]["status"] == "cancelled"
        assert [e["type"] for e in shown["events"]] == ["accepted", "finished"]
        watched = runner.invoke(app, ["tasks", "watch", task_id, "--json"], env=_env(settings))
        assert watched.exit_code == 0, watched.output
        assert json.loads(watched.stdout)["status"] == "cancelled"
        missing = runner.invoke(app, ["tasks", "show", "t_nope"], env=_env(settings))
        assert missing.exit_code == 1 and "t_nope" in missing.output
    finally:
        server.terminate()
        server.wait(timeout=20)


def test_submit_follows_a_real_task_live_to_its_result(settings: Settings, require_bwrap, require_claude) -> None:
    import socket

    images = Settings.load({}).image_cache_path / "images"
    if not images.is_dir():
        from server_kit import require_or_skip

        require_or_skip("the sandbox image", "taskbus sandbox build-image")
    settings.data_path.mkdir(parents=True, exist_ok=True)
    (settings.data_path / "images").symlink_to(images)

    async def make_key() -> str:
        async with Store.for_settings(settings) as store:
            return (await store.create_key("developer"))[0]

    key = asyncio.run(make_key())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        model_port = sock.getsockname()[1]
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("TASKBUS_")},
        **_env(settings),
        "TASKBUS_UPSTREAM_URL": f"http://127.0.0.1:{model_port}",
        "TASKBUS_CLAUDE_PATH": str(require_claude),
    }
    commands = [
        ["model", "serve", "--port", str(model_port)],
        ["runner", "--slots", "1", "--backend", "bwrap"],
        ["serve", "--transport", "none"],
    ]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cli", "--log-level", "warning", *c],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for c in commands
    ]
    try:
        asyncio.run(_wait_for_gateway(settings))
        cli_env = {**_env(settings), "TASKBUS_UPSTREAM_URL": env["TASKBUS_UPSTREAM_URL"]}
        result = CliRunner().invoke(app, ["submit", "[script:write-a-file] write hello.txt", "--key", key], env=cli_env)
        assert result.exit_code == 0, result.output
        assert "tool call Bash" in result.output and "artifact hello.txt" in result.output
        assert "succeeded" in result.output and "Done: wrote hello.txt" in result.output
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=40)
