"""CLI commands find a running `taskbus up` of their data dir (its NATS port and the
operator's credentials) by themselves; its NATS refuses everyone else."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import nats
import pytest
from up_kit import ROOT, TASKBUS


def _cli(*args: str, data: Path, extra: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """A separate process with only TASKBUS_DATA_DIR (and the usual PATH/HOME) set."""
    env = {
        "PATH": os.environ["PATH"],
        "HOME": os.environ.get("HOME", "/root"),
        "TASKBUS_DATA_DIR": str(data),
        "COLUMNS": "200",
        **(extra or {}),
    }
    return subprocess.run([TASKBUS, *args], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180)


def _one_clear_line(done: subprocess.CompletedProcess[str]) -> str:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr and "╭" not in done.stderr, done.stderr
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), done.stderr
    return lines[0]


def test_cli_commands_find_a_stack_on_another_nats_port_and_strangers_are_refused(start_up) -> None:
    up = start_up()
    state = up.ready_state()
    port = int(state["nats_url"].rsplit(":", 1)[1])
    assert port != 4222  # started with --nats-port 0
    made = _cli("keys", "create", "--profile", "developer", "--name", "discovery", "--json", data=up.data)
    assert made.returncode == 0 and "could not be published" not in made.stderr, made.stderr  # its notice went out
    key = json.loads(made.stdout)["key"]

    done = _cli("submit", "--json", "--key", key, "say hello", data=up.data)
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "succeeded"
    shown = _cli("tasks", "show", summary["task_id"], "--json", data=up.data)
    assert shown.returncode == 0, shown.stderr
    assert summary["task_id"] in shown.stdout

    # TASKBUS_NATS_URL still wins, with whatever credentials are given: wrong ones are one clear line
    wrong = up.data.parent / "wrong.json"
    wrong.write_text(json.dumps({"user": "taskbus-cli", "password": "not-the-password"}))
    line = _one_clear_line(
        _cli(
            "submit",
            "--complete",
            "--key",
            key,
            "hi",
            data=up.data,
            extra={"TASKBUS_NATS_URL": state["nats_url"], "TASKBUS_NATS_CREDENTIALS": str(wrong)},
        )
    )
    assert "refused" in line and "not-the-password" not in line

    async def stranger() -> None:  # another local user: no credentials file to read
        await nats.connect(state["nats_url"], allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=0)

    with pytest.raises(Exception, match=r"(?i)authorization"):
        asyncio.run(stranger())


def test_without_a_running_stack_submit_says_what_to_do_in_one_line(tmp_path: Path) -> None:
    line = _one_clear_line(_cli("submit", "--complete", "--key", "tb_" + "x" * 40, "hi", data=tmp_path / "data"))
    assert "taskbus up" in line and "TASKBUS_NATS_URL" in line
