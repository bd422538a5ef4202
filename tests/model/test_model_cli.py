"""``taskbus model serve`` and ``taskbus model scripts``."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import threading
from pathlib import Path

import httpx
from typer.testing import CliRunner

from cli import app
from sandbox._scripted import read_log

ROOT = Path(__file__).resolve().parents[2]
TASKBUS = [sys.executable, "-c", "from cli import main; main()"]


def test_model_scripts_json_lists_the_shipped_scripts() -> None:
    result = CliRunner().invoke(app, ["model", "scripts", "--json"])
    assert result.exit_code == 0, result.output
    rows = {row["name"]: row for row in json.loads(result.stdout)}
    assert rows["write-a-file"]["turns"] == 2
    assert "Bash" in rows["write-a-file"]["description"]
    assert not any(row["description"].startswith("BROKEN") for row in rows.values())


def test_model_serve_with_a_bad_script_says_where_and_exits_1(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[turns]]\ntext = "a"\nstop_reason = "whenever"\n')
    result = CliRunner().invoke(app, ["model", "serve", "--script", str(bad)])
    assert result.exit_code == 1
    assert "$.turns[0].stop_reason" in result.stderr
    assert "Traceback" not in result.output


def _read_url(process: subprocess.Popen[str], timeout: float) -> str:
    found: list[str] = []
    done = threading.Event()

    def reader() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            match = re.search(r"http://127\.0\.0\.1:\d+", line)
            if match:
                found.append(match.group(0))
                break
        done.set()

    threading.Thread(target=reader, daemon=True).start()
    assert done.wait(timeout), "taskbus model serve printed no URL"
    assert found, "taskbus model serve exited without printing its URL"
    return found[0]


def test_model_serve_runs_a_shipped_script_with_key_and_log_until_sigterm(tmp_path: Path) -> None:
    log = tmp_path / "requests.jsonl"
    process = subprocess.Popen(
        [*TASKBUS, "model", "serve", "--script", "write-a-file", "--port", "0", "--log", str(log), "--require-key", "sk-ant-cli-test-key"],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        url = _read_url(process, timeout=30)
        body = {"model": "claude-opus-4-8", "max_tokens": 100, "messages": [{"role": "user", "content": "go"}]}
        denied = httpx.post(f"{url}/v1/messages", json=body, headers={"x-api-key": "wrong"})
        assert denied.status_code == 401
        reply = httpx.post(f"{url}/v1/messages?beta=true", json=body, headers={"x-api-key": "sk-ant-cli-test-key"})
        assert reply.status_code == 200
        assert reply.json()["content"][1]["name"] == "Bash"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)
    assert process.returncode == 0, process.stderr.read() if process.stderr else ""
    records = read_log(log)
    assert [r["status"] for r in records] == [401, 200]
    assert records[1]["query"] == "beta=true"
    assert records[1]["headers"]["x-api-key"] == "[REDACTED]"
    assert "sk-ant-cli-test-key" not in log.read_text()
