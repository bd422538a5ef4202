"""``taskbus submit`` takes what the MCP ``run_task`` tool takes, and ``taskbus tasks artifacts``
downloads what a task wrote, never outside ``--out`` whatever the artifact names say."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from test_cli_tasks import ROOT, _env, _wait_for_gateway
from typer.testing import CliRunner

from bus import Bus, Settings, Subjects, encode, new_task_id
from bus._messages import Accepted, Artifact
from cli import app

READ_PROJECT = """
name = "read-project"
description = "Reads /project/notes.txt on every turn, never stops by itself."
repeat_last = true

[[turns]]
text = "Reading the notes"
tool_use = [{ name = "Read", input = { file_path = "/project/notes.txt" } }]
"""


def _cli(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(app, list(args), env=_env(settings))


@pytest.fixture
def stack(settings: Settings, tmp_path: Path, require_bwrap: None, require_claude: Path) -> Iterator[Settings]:
    """model (the read-project script by default), runner (bwrap) and server, as separate processes."""
    script = tmp_path / "read-project.toml"
    script.write_text(READ_PROJECT)
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
        ["model", "serve", "--port", str(model_port), "--script", str(script)],
        ["runner", "--slots", "1", "--backend", "bwrap"],
        ["serve", "--transport", "none"],
    ]
    logs = [(tmp_path / f"{c[0]}.log").open("wb") for c in commands]
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "cli", "--log-level", "info", *c],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        for c, log in zip(commands, logs, strict=True)
    ]
    try:
        asyncio.run(_wait_for_gateway(settings))
        yield settings
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=40)
        for log in logs:
            log.close()


def _events(settings: Settings, task_id: str) -> list[dict[str, Any]]:
    shown = _cli(settings, "tasks", "show", task_id, "--json")
    assert shown.exit_code == 0, shown.output
    return json.loads(shown.stdout)["events"]


def test_submit_options_reach_the_runner_and_artifacts_download_what_the_task_wrote(stack: Settings, tmp_path: Path) -> None:
    settings = stack
    project = tmp_path / "project"
    project.mkdir()
    (project / "notes.txt").write_text("the notes of this project\n")
    made = _cli(settings, "profiles", "create", "projects", "--from", "developer", "--fs", "readonly", "--root", str(project))
    assert made.exit_code == 0, made.output
    key = json.loads(_cli(settings, "keys", "create", "--profile", "projects", "--json").stdout)["key"]

    submitted = _cli(
        settings,
        "submit",
        "read the notes",
        "--key",
        key,
        "--json",
        "--project",
        str(project),
        "--allow-tool",
        "Read",
        "--max-turns",
        "3",
        "--effort",
        "low",
        "--timeout",
        "240",
    )
    task_id = json.loads(submitted.stdout)["task_id"]
    events = _events(settings, task_id)
    accepted = next(e for e in events if e["type"] == "accepted")
    assert "effort=low" in accepted["routing_reason"]
    init = next(e["line"] for e in events if e["type"] == "log" and " started: model " in e["line"])
    assert init.rsplit(" tools ", 1)[1].split(",") == ["Read"]
    calls = [e for e in events if e["type"] == "tool_call"]
    results = [e for e in events if e["type"] == "tool_result"]
    assert calls and all(c["name"] == "Read" for c in calls)
    assert any("the notes of this project" in r["output"] and not r["is_error"] for r in results)  # /project mounted
    finished = events[-1]
    # the script never stops by itself: Claude Code's --max-turns 3 ended it after three tool calls
    assert finished["type"] == "finished" and finished["reason"] == "error_max_turns" and len(calls) == 3

    wrote = _cli(settings, "submit", "[script:write-a-file] write hello.txt", "--key", key, "--json", "--timeout", "240")
    assert wrote.exit_code == 0, wrote.output
    wrote_id = json.loads(wrote.stdout)["task_id"]
    out = tmp_path / "out"
    fetched = _cli(settings, "tasks", "artifacts", wrote_id, "--out", str(out), "--json")
    assert fetched.exit_code == 0, fetched.output
    assert [a["path"] for a in json.loads(fetched.stdout)["artifacts"]] == ["hello.txt"]
    assert (out / "hello.txt").read_text() == "hello from the scripted model\n"

    (out / "hello.txt").write_text("mine")
    again = _cli(settings, "tasks", "artifacts", wrote_id, "--out", str(out))
    assert again.exit_code == 1 and "already exist" in again.output and "--force" in again.output
    assert (out / "hello.txt").read_text() == "mine"
    forced = _cli(settings, "tasks", "artifacts", wrote_id, "--out", str(out), "--force")
    assert forced.exit_code == 0, forced.output
    assert (out / "hello.txt").read_text() == "hello from the scripted model\n"


def test_submit_refuses_task_options_on_a_completion_and_a_bad_effort(settings: Settings) -> None:
    mixed = _cli(settings, "submit", "hi", "--complete", "--allow-tool", "Read", "--key", "tb_x")
    assert mixed.exit_code == 2 and "--allow-tool" in mixed.output
    bad = _cli(settings, "submit", "hi", "--effort", "max", "--key", "tb_x")
    assert bad.exit_code == 2 and "--effort" in bad.output


async def _plant(settings: Settings, files: dict[str, bytes]) -> str:
    """A task whose events announce ``files`` (hostile names included) and whose objects hold them."""
    task_id = new_task_id()
    subjects = Subjects(settings.subject_prefix)
    async with await Bus.open(settings.nats_url, subjects) as bus:
        await bus.ensure_streams()
        store = await bus.js.object_store(subjects.artifacts_bucket)
        now = datetime.now(UTC)
        await bus.js.publish(
            subjects.events(task_id),
            encode(Accepted(task_id=task_id, seq=1, ts=now, kind="task", key_id="tb_test", profile="developer", model="m")),
        )
        for seq, (path, data) in enumerate(files.items(), start=2):
            await store.put(f"{task_id}/{path}", data)
            await bus.js.publish(
                subjects.events(task_id),
                encode(
                    Artifact(
                        task_id=task_id,
                        seq=seq,
                        ts=now,
                        path=path,
                        size=len(data),
                        sha256=hashlib.sha256(data).hexdigest(),
                        object_key=f"{task_id}/{path}",
                    )
                ),
            )
    return task_id


@pytest.mark.parametrize("name", ["../escaped.txt", "a/../../escaped.txt", "/tmp/escaped.txt", "./x", "a//b", "a\\..\\b"])
def test_an_artifact_name_that_could_leave_out_is_refused_and_nothing_is_written(settings: Settings, tmp_path: Path, name: str) -> None:
    task_id = asyncio.run(_plant(settings, {"fine.txt": b"ok", name: b"evil"}))
    (tmp_path / "box").mkdir()
    out = tmp_path / "box" / "out"
    result = _cli(settings, "tasks", "artifacts", task_id, "--out", str(out), "--force")
    assert result.exit_code == 1 and "not a plain relative path" in result.output
    assert "Traceback" not in result.output
    assert list((tmp_path / "box").rglob("*")) == []  # checked before anything is written, even the fine one
    assert not Path("/tmp/escaped.txt").exists()


def test_artifacts_never_write_through_a_link_in_out(settings: Settings, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "target.txt").write_text("untouched")
    out = tmp_path / "out"
    out.mkdir()
    (out / "sub").symlink_to(elsewhere)
    (out / "link.txt").symlink_to(elsewhere / "target.txt")

    through_folder = asyncio.run(_plant(settings, {"sub/x.txt": b"evil"}))
    result = _cli(settings, "tasks", "artifacts", through_folder, "--out", str(out), "--force")
    assert result.exit_code == 1 and "link or not a folder" in result.output
    assert sorted(p.name for p in elsewhere.iterdir()) == ["target.txt"]

    onto_link = asyncio.run(_plant(settings, {"link.txt": b"evil"}))
    refused = _cli(settings, "tasks", "artifacts", onto_link, "--out", str(out))
    assert refused.exit_code == 1 and "already exist" in refused.output
    replaced = _cli(settings, "tasks", "artifacts", onto_link, "--out", str(out), "--force")
    assert replaced.exit_code == 0, replaced.output
    assert (elsewhere / "target.txt").read_text() == "untouched"  # the link was replaced, not followed
    assert not (out / "link.txt").is_symlink() and (out / "link.txt").read_bytes() == b"evil"


def test_artifacts_of_an_unknown_task_is_one_clear_line(settings: Settings, tmp_path: Path) -> None:
    result = _cli(settings, "tasks", "artifacts", new_task_id(), "--out", str(tmp_path))
    assert result.exit_code == 1 and "no events for task" in result.output and "Traceback" not in result.output
