"""Sandbox life: output streams while a command runs, the gateway socket and a
loopback forwarder work inside, the real Claude Code CLI runs, the reaper removes a
killed runner's sandboxes, the image build is cached, the policy maps onto a spec."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from sandbox_helpers import ROOT, assert_nothing_left, image_settings, make_policy

from bus import InvalidInput, SandboxError, Settings
from sandbox._sandboxes import (
    SandboxSpec,
    build_image,
    get_backend,
    life_token,
    spec_from_policy,
)

FORWARDER = r"""
import socket, sys, threading
port, target = int(sys.argv[1]), sys.argv[2]
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", port))
server.listen()
print("listening", flush=True)
def pipe(a, b):
    while data := a.recv(65536):
        b.sendall(data)
    b.shutdown(socket.SHUT_WR)
while True:
    conn, _ = server.accept()
    upstream = socket.socket(socket.AF_UNIX)
    upstream.connect(target)
    threading.Thread(target=pipe, args=(conn, upstream), daemon=True).start()
    threading.Thread(target=pipe, args=(upstream, conn), daemon=True).start()
"""

CLIENT = r"""
import socket
s = socket.create_connection(("127.0.0.1", 8089), timeout=10)
s.sendall(b"ping")
s.shutdown(socket.SHUT_WR)
print(s.recv(100).decode())
"""


async def test_output_streams_line_by_line_while_the_command_runs(new_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb = await new_sandbox()
    script = "echo first; echo warn >&2; until [ -e /workspace/go ]; do sleep 0.02; done; echo second"
    ex = await sb.exec(["bash", "-c", script])
    stream, line = await asyncio.wait_for(ex.__anext__(), 30)
    assert (stream, line) == ("stdout", "first")
    assert ex.returncode is None  # the command waits for us: the line came while it runs
    (sb.workspace / "go").touch()
    rest = await ex.collect(timeout=60)
    assert rest.stderr == ["warn"] and rest.stdout == ["second"] and rest.exit_code == 0


async def test_stdin_reaches_the_command(new_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb = await new_sandbox()
    result = await (await sb.exec(["bash", "-c", "tr a-z A-Z"], stdin=b"hello\nworld\n")).collect(timeout=30)
    assert result.stdout == ["HELLO", "WORLD"] and result.exit_code == 0


async def test_a_missing_command_fails_with_exit_127_and_says_why(new_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb = await new_sandbox()
    result = await (await sb.exec(["no-such-command", "x"])).collect(timeout=30)
    assert result.exit_code == 127
    assert "no-such-command" in result.err
    with pytest.raises(SandboxError, match="NUL"):
        await sb.exec(["echo", "a\0b"])
    assert (await (await sb.exec(["true"])).wait(timeout=30)) == 0  # the sandbox still works


async def test_home_files_are_in_place_before_anything_runs(new_sandbox) -> None:  # type: ignore[no-untyped-def]
    sb = await new_sandbox(home_files={".claude/settings.json": b'{"a": 1}', "notes.txt": b"hi"})
    result = await (
        await sb.exec(
            [
                "bash",
                "-c",
                "cat ~/.claude/settings.json ~/notes.txt; echo; stat -c %U ~ ~/.claude/settings.json; touch ~/.claude/new && echo writable",
            ],
            cwd="/tmp",
        )
    ).collect(timeout=30)
    assert result.stdout == ['{"a": 1}hi', "agent", "agent", "writable"], result


async def test_gateway_socket_is_reachable_through_a_loopback_forwarder(new_sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    run.mkdir()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(100)
        writer.write(b"pong:" + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(answer, str(run / "model.sock"))
    try:
        sb = await new_sandbox(socket_dir=str(run))
        forwarder = await sb.exec(["python3", "-c", FORWARDER, "8089", "/run/taskbus/model.sock"])
        assert await asyncio.wait_for(forwarder.__anext__(), 30) == ("stdout", "listening")
        result = await (await sb.exec(["python3", "-c", CLIENT])).collect(timeout=30)
        assert result.stdout == ["pong:ping"], result
        await forwarder.kill()
        assert await forwarder.wait(timeout=10) != 0
    finally:
        server.close()


async def test_real_claude_cli_runs_inside(new_sandbox, require_claude: Path) -> None:  # type: ignore[no-untyped-def]
    sb = await new_sandbox(memory_mb=1024, pids=256, disk_mb=256, ro_mounts=[(str(require_claude.parent), "/opt/claude")])
    result = await (await sb.exec([f"/opt/claude/{require_claude.name}", "--version"], cwd="/workspace")).collect(timeout=120)
    assert result.exit_code == 0, result
    assert "Claude Code" in result.out


async def test_reaper_removes_sandboxes_of_a_killed_runner(backend_name: str, sandbox_settings: Settings, workspace: Path) -> None:
    backend = get_backend(backend_name, sandbox_settings)
    alive_spec = SandboxSpec(task_id="kept", runner_id="alive-runner", workspace=str(workspace))
    alive = await backend.create(alive_spec)
    children = {}
    try:
        for runner in ("dead-runner", "me"):  # a crashed runner, and our own previous life
            child = await asyncio.to_thread(
                subprocess.Popen,
                [sys.executable, str(Path(__file__).parent / "reaper_child.py"), sandbox_settings.data_dir, runner, backend_name],
                stdout=subprocess.PIPE,
                cwd=ROOT,
            )
            line = await asyncio.wait_for(asyncio.to_thread(child.stdout.readline), 60)  # type: ignore[union-attr]
            assert line.startswith(b"ready"), line
            children[runner] = (child, line.split()[1:])
        for child, _ in children.values():
            child.send_signal(signal.SIGKILL)
            await asyncio.to_thread(child.wait, 10)
        orphan_ids = {i.decode() for _, ids in children.values() for i in ids}
        listed = {info.id for info in await backend.list()}
        assert orphan_ids <= listed
        removed = await backend.reap({"alive-runner", "me"}, "me")
        assert removed == len(orphan_ids)
        left = {info.id for info in await backend.list()}
        assert not (orphan_ids & left)
        assert alive.id in left  # a live runner's sandbox is not touched
        assert (await (await alive.exec(["true"])).wait(timeout=30)) == 0
        assert await backend.reap({"alive-runner", "me"}, "me") == 0
    finally:
        for child, _ in children.values():
            if child.poll() is None:
                child.kill()
        await alive.destroy()
        await assert_nothing_left(alive)
        await backend.reap(set(), "nobody")
        await backend.close()
    assert _no_taskbus_cgroup_for(orphan_ids)


def _no_taskbus_cgroup_for(ids: set[str]) -> bool:
    for controller in ("memory", "pids", "cpu"):
        for path in Path(f"/sys/fs/cgroup/{controller}").rglob("taskbus"):
            if any((path / i).exists() for i in ids):
                return False
    return True


def test_image_build_is_cached(image_cache: Path) -> None:
    started = time.monotonic()
    info = build_image(image_settings())
    assert not info.built
    assert time.monotonic() - started < 15
    assert Path(info.rootfs, "usr/bin/python3").exists()
    assert Path(info.rootfs, "home/agent").stat().st_uid == 1000
    assert {p.name for p in Path(info.rootfs, "root").iterdir()} <= {".bashrc", ".profile"}  # Debian's skeleton only
    assert Path(info.rootfs, "etc/resolv.conf").read_text() == ""


def test_policy_maps_onto_a_sandbox_spec(tmp_path: Path) -> None:
    policy = make_policy(cpus=0.5, memory_mb=300, pids=20, disk_mb=10, timeout_s=7, fs_access="readonly", project_root="/srv/p")
    spec = spec_from_policy(policy, runner_id="r1", workspace=str(tmp_path), ro_mounts=[("/opt/x", "/opt/claude")])
    assert (spec.cpus, spec.memory_mb, spec.pids, spec.disk_mb, spec.timeout_s) == (0.5, 300, 20, 10, 7.0)
    assert spec.project == "/srv/p" and spec.task_id == policy.task_id and spec.ro_mounts == (("/opt/x", "/opt/claude"),)
    no_fs = spec_from_policy(make_policy(fs_access="none", project_root="/srv/p"), runner_id="r1", workspace=str(tmp_path))
    assert no_fs.project is None
    with pytest.raises(InvalidInput):
        spec_from_policy(policy, runner_id="r1", workspace=str(tmp_path), home_files={"../escape": b""})
    with pytest.raises(InvalidInput):
        SandboxSpec(task_id="t", runner_id="r", workspace="/w", memory_mb=0)


def test_life_token_names_this_process() -> None:
    assert life_token().startswith(f"{os.getpid()}-")


async def test_bwrap_refuses_a_file_mount_missing_from_the_image_with_a_clear_error(
    require_bwrap: None, sandbox_settings: Settings, workspace: Path, tmp_path: Path
) -> None:
    settings_file = tmp_path / "managed-settings.json"
    settings_file.write_text("{}")
    backend = get_backend("bwrap", sandbox_settings)
    spec = SandboxSpec(
        task_id="t", runner_id="r", workspace=str(workspace), ro_mounts=((str(settings_file), "/etc/claude-code/managed-settings.json"),)
    )
    with pytest.raises(SandboxError, match="mount it under one of the image's mount points"):
        await backend.create(spec)
    assert await backend.list() == []  # nothing half-made is left
