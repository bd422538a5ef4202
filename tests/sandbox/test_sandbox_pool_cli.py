"""The Docker warm pool hands out ready containers with the task's own workspace, and
the ``taskbus sandbox`` commands work."""

from __future__ import annotations

import json
from pathlib import Path

from sandbox_helpers import assert_nothing_left
from typer.testing import CliRunner

from bus import Settings
from cli import app
from sandbox._sandboxes import DockerBackend, SandboxSpec


async def test_warm_pool_hands_out_a_ready_container_with_the_tasks_workspace(
    require_docker: None, sandbox_settings: Settings, tmp_path: Path
) -> None:
    import msgspec

    settings = msgspec.structs.replace(sandbox_settings, docker_warm_pool=1)
    backend = DockerBackend(settings)
    ws = tmp_path / "task-ws"
    ws.mkdir()
    (ws / "input.txt").write_text("from the runner")
    spec = SandboxSpec(
        task_id="pooled-task", runner_id="pool-runner", workspace=str(ws), memory_mb=256, pids=64, disk_mb=32, home_files={"h.txt": b"home"}
    )
    try:
        assert await backend.prewarm(spec, timeout=60) == 1
        pooled_ids = {i.id for i in await backend.list() if i.state == "pooled"}
        assert len(pooled_ids) == 1
        sb = await backend.create(spec)
        assert sb.id in pooled_ids and sb.workspace != ws  # handed out from the pool
        result = await (await sb.exec(["bash", "-c", "cat input.txt ~/h.txt; echo; echo result > output.txt; id -u"])).collect(timeout=30)
        assert result.stdout == ["from the runnerhome", "1000"], result
        await sb.destroy()
        await assert_nothing_left(sb)
        assert (ws / "output.txt").read_text() == "result\n"  # moved back into the task's folder
        assert (ws / "input.txt").exists()
    finally:
        await backend.close()
    left = [i for i in await DockerBackend(settings).list() if i.runner_id == "pool-runner"]
    assert left == []  # close() removed the refilled idle container


def test_cli_runs_a_command_in_a_sandbox_and_returns_its_exit_code(require_bwrap: None, sandbox_settings: Settings, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("TASKBUS_DATA_DIR", sandbox_settings.data_dir)
    runner = CliRunner()
    result = runner.invoke(
        app, ["sandbox", "run", "--backend", "bwrap", "--memory", "128", "--", "bash", "-c", "echo hi from $(id -un); exit 3"]
    )
    assert result.exit_code == 3, result.output
    assert "hi from agent" in result.output
    listing = runner.invoke(app, ["sandbox", "ls", "--json"])
    assert listing.exit_code == 0
    assert json.loads(listing.stdout)["sandboxes"] == [] or all(s["task_id"] != "manual" for s in json.loads(listing.stdout)["sandboxes"])
    bad = runner.invoke(app, ["sandbox", "run", "--backend", "nope", "--", "true"])
    assert bad.exit_code == 2 and "bwrap or docker" in bad.output
