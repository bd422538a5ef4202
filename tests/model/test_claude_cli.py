"""The real Claude Code CLI runs against the scripted model server."""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path
from typing import Any

import pytest

from sandbox._scripted import ScriptedModelServer

pytestmark = pytest.mark.claude


async def run_claude(
    claude: Path,
    url: str,
    workdir: Path,
    prompt: str,
    *,
    api_key: str = "sk-ant-placeholder-key",
    max_turns: int = 6,
    nonessential: bool = False,
    timeout: float = 90,
) -> tuple[int, list[dict[str, Any]], str]:
    """``claude -p`` in ``workdir``; returns exit code, stream-json lines, stderr."""
    home = workdir.parent / f"{workdir.name}-home"
    home.mkdir(exist_ok=True)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "ANTHROPIC_BASE_URL": url,
        "ANTHROPIC_API_KEY": api_key,
    }
    if not nonessential:
        env["CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC"] = "1"
    process = await asyncio.create_subprocess_exec(
        str(claude), "-p", prompt, "--output-format", "stream-json", "--verbose",
        "--allowedTools", "Bash,Write,Read", "--max-turns", str(max_turns),
        cwd=workdir, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    try:
        async with asyncio.timeout(timeout):
            stdout, stderr = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    lines = [json.loads(line) for line in stdout.decode().splitlines() if line.startswith("{")]
    return process.returncode or 0, lines, stderr.decode()


def blocks(lines: list[dict[str, Any]], kind: str, block_type: str) -> list[dict[str, Any]]:
    found = []
    for line in lines:
        if line.get("type") == kind:
            content = line["message"]["content"]
            found += [b for b in content if isinstance(b, dict) and b.get("type") == block_type]
    return found


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    path = tmp_path / "work"
    path.mkdir()
    return path


async def test_claude_cli_runs_write_a_file_and_the_file_exists(require_claude: Path, workdir: Path, tmp_path: Path) -> None:
    async with ScriptedModelServer("write-a-file", log_path=tmp_path / "model.jsonl") as model:
        code, lines, stderr = await run_claude(require_claude, model.url, workdir, "write the file")
        requests = model.requests()
    assert code == 0, stderr
    assert (workdir / "hello.txt").read_text() == "hello from the scripted model\n"
    [tool_use] = blocks(lines, "assistant", "tool_use")
    assert tool_use["name"] == "Bash"
    [tool_result] = blocks(lines, "user", "tool_result")
    assert tool_result["tool_use_id"] == tool_use["id"] and not tool_result.get("is_error")
    result = lines[-1]
    assert result["type"] == "result" and result["subtype"] == "success" and not result["is_error"]
    assert result["result"] == "Done: wrote hello.txt"
    conversation = [r for r in requests if r["path"] == "/v1/messages"]
    assert [r["turn"] for r in conversation] == [0, 1]
    assert all(r["stream"] and r["query"] == "beta=true" for r in conversation)
    assert "Bash" in conversation[0]["tools"]
    assistant_models = {line["message"]["model"] for line in lines if line.get("type") == "assistant"}
    assert assistant_models == {conversation[0]["model"]}  # the requested model is echoed back


async def test_side_requests_of_claude_cli_do_not_consume_script_turns(require_claude: Path, workdir: Path, tmp_path: Path) -> None:
    async with ScriptedModelServer(log_path=tmp_path / "model.jsonl") as model:
        code, lines, stderr = await run_claude(require_claude, model.url, workdir, "please [script:multi-step]", nonessential=True)
        requests = model.requests()
    assert code == 0, stderr
    assert lines[-1]["result"] == "notes.txt has 3 lines."
    assert (workdir / "notes.txt").read_text() == "line one\nline two\nline three\n"
    assert [b["name"] for b in blocks(lines, "assistant", "tool_use")] == ["Write", "Read", "Bash"]
    main = [r["turn"] for r in requests if r["path"] == "/v1/messages" and not r.get("side")]
    assert main == [0, 1, 2, 3]
    assert any(r.get("side") == "structured_output" for r in requests)  # e.g. the session title


async def test_claude_cli_with_the_required_key_works_and_a_wrong_key_fails_with_401(
    require_claude: Path, workdir: Path, tmp_path: Path
) -> None:
    key = "sk-ant-injected-credential-1234"
    async with ScriptedModelServer("hello", required_api_key=key, log_path=tmp_path / "m.jsonl") as model:
        code, lines, _ = await run_claude(require_claude, model.url, workdir, "hi", api_key=key)
        assert code == 0 and lines[-1]["result"] == "Hello from the scripted model."
        code, lines, _ = await run_claude(require_claude, model.url, workdir, "hi", api_key="sk-ant-wrong-key-000000")
    result = lines[-1]
    assert code != 0 and result["is_error"] and result.get("api_error_status") == 401
    assert key not in (tmp_path / "m.jsonl").read_text()


async def test_runaway_script_is_stopped_by_max_turns(require_claude: Path, workdir: Path) -> None:
    async with ScriptedModelServer("runaway") as model:
        _code, lines, _ = await run_claude(require_claude, model.url, workdir, "go", max_turns=2)
    result = lines[-1]
    assert result["type"] == "result" and result["subtype"] == "error_max_turns"
    assert len(blocks(lines, "user", "tool_result")) == 2


async def test_claude_cli_without_a_marker_gets_the_task_description_echoed_not_its_reminders(
    require_claude: Path, workdir: Path, tmp_path: Path
) -> None:
    # The README's example task, offline: Claude Code wraps the prompt with
    # <system-reminder> context blocks; the echo must be what the user wrote.
    async with ScriptedModelServer(None, log_path=tmp_path / "model.jsonl") as model:
        code, lines, stderr = await run_claude(require_claude, model.url, workdir, "Write hello.py and run it")
    assert code == 0, stderr
    result = next(line for line in lines if line.get("type") == "result")
    assert result["is_error"] is False
    assert result["result"] == "Write hello.py and run it"
