"""A hostile workspace against the root runner (issue #13 items 1, 2, 8).

The agent leaves racers running in the background (``setsid nohup``) that swap links,
FIFOs and sockets over files it wrote, fills the workspace past ``disk_mb``, makes huge
sparse files and thousands of small ones. What must hold, on both backends: no byte from
outside the workspace ever reaches the Object Store, what was refused is reported as a
``security`` event, writes past ``disk_mb`` fail inside and the host folder stays under
it, the runner keeps heartbeating (no gap over 2 heartbeat intervals) and another task on
the same runner still runs. The first tests attack ``_safefs`` itself on the host,
deterministically, with a swap between the walk and the read.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
import threading
from pathlib import Path

import msgspec
import pytest
from ci_guard import require
from mount_guard import detach_all_under, mount_points_under
from workspace_kit import (
    HEARTBEAT_S,
    SPECIAL_RACER,
    SYMLINK_RACER,
    AttackRun,
    background,
    bash_script,
    run_attack,
    runner_fixtures,
)

import bus as bus_module
from bus import Artifact, InputFile, InvalidInput, Log, Security, Settings, Started, ToolResult
from sandbox._runner import _safefs
from sandbox._runner._runner import run_root
from sandbox._runner._workspace import store_artifacts, write_inputs

image_cache = runner_fixtures.image_cache
runner_settings = runner_fixtures.runner_settings


@pytest.fixture(params=["bwrap", "docker"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each attack on both backends (the backend's ``require_*`` fixture fails under CI when missing)."""
    request.getfixturevalue(f"require_{request.param}")
    return str(request.param)


@pytest.fixture
def canary(tmp_path: Path) -> bytes:
    """A secret file on the host, readable by root only."""
    secret = b"CANARY-" + secrets.token_hex(24).encode()
    path = tmp_path / "host-secret" / "canary.txt"
    path.parent.mkdir()
    path.write_bytes(secret)
    path.chmod(0o600)
    return secret


def canary_path(tmp_path: Path) -> Path:
    return tmp_path / "host-secret" / "canary.txt"


def assert_runner_stayed_responsive(run: AttackRun) -> None:
    assert run.worst_gap() < 2 * HEARTBEAT_S, f"the runner went {run.worst_gap():.1f}s without a heartbeat"
    last = run.other[-1]
    assert last.status == "succeeded", last  # type: ignore[union-attr]
    assert any(isinstance(e, Artifact) and e.path == "hello.txt" for e in run.other)


# ---------------------------------------------------------------- _safefs on the host


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    path = tmp_path / "ws"
    path.mkdir()
    (path / "a.txt").write_bytes(b"decoy")
    return path


def _swap(folder: Path, name: str, make: object) -> None:
    os.rename(folder / name, folder / "old")
    make(folder / name)  # type: ignore[operator]


@pytest.mark.parametrize("swap", ["symlink", "fifo", "socket", "other file", "grown"])
def test_a_file_swapped_after_the_walk_is_refused_without_reading_outside(folder: Path, tmp_path: Path, swap: str) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"HOST-SECRET")
    seen = _safefs.walk(folder, skip_dirs=set(), max_entries=100)
    entry = seen.files["a.txt"]
    keep: list[socket.socket] = []
    if swap == "symlink":
        _swap(folder, "a.txt", lambda p: p.symlink_to(secret))
    elif swap == "fifo":
        _swap(folder, "a.txt", os.mkfifo)
    elif swap == "socket":
        s = socket.socket(socket.AF_UNIX)
        keep.append(s)
        _swap(folder, "a.txt", lambda p: s.bind(str(p)))
    elif swap == "other file":
        _swap(folder, "a.txt", lambda p: p.write_bytes(b"decoy"))
    else:
        (folder / "a.txt").write_bytes(b"decoy and more")
    done: list[object] = []
    reader = threading.Thread(target=lambda: done.append(_try_read(folder, entry)), daemon=True)
    reader.start()
    reader.join(timeout=30)
    assert done, "reading must never block (a FIFO is opened non-blocking)"
    assert isinstance(done[0], _safefs.Refused), done[0]
    for s in keep:
        s.close()


def _try_read(folder: Path, entry: _safefs.Entry) -> object:
    try:
        return _safefs.read_file(folder, "a.txt", entry, max_bytes=1 << 20)
    except _safefs.Refused as exc:
        return exc


async def test_a_file_swapped_between_walk_and_read_is_a_critical_security_event_and_not_stored(
    bus: bus_module.Bus, settings: Settings, folder: Path, tmp_path: Path
) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"HOST-SECRET")
    os.mkfifo(folder / "pipe")
    (folder / "b.txt").write_bytes(b"kept")
    events: list[tuple[type, dict[str, object]]] = []

    async def emit(event_type: type, **fields: object) -> None:
        events.append((event_type, fields))
        if len(events) == 1:  # the walk's report of the FIFO: the walk is over, nothing read yet
            os.rename(folder / "a.txt", folder / "old")
            (folder / "a.txt").symlink_to(secret)

    await store_artifacts(bus, settings, "t_swap", folder, {}, {}, emit)
    assert events[0] == (Security, {"kind": "artifact_refused", "severity": "warning", "detail": "pipe: a fifo in the workspace; not read"})
    critical = [f for kind, f in events if kind is Security and f["severity"] == "critical"]
    assert len(critical) == 1 and str(critical[0]["detail"]).startswith("a.txt: "), events
    stored = {f["path"]: f for kind, f in events if kind is Artifact}
    assert set(stored) == {"b.txt"}
    store = await bus.js.object_store(bus.subjects.artifacts_bucket)
    assert (await store.get("t_swap/b.txt")).data == b"kept"


def test_a_folder_swapped_for_a_link_is_never_entered(folder: Path, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "a.txt").write_bytes(b"decoy")
    (folder / "sub").mkdir()
    (folder / "sub" / "a.txt").write_bytes(b"decoy")
    seen = _safefs.walk(folder, skip_dirs=set(), max_entries=100)
    os.rename(folder / "sub", folder / "gone")
    (folder / "sub").symlink_to(outside)
    with pytest.raises(_safefs.Refused, match="link"):
        _safefs.read_file(folder, "sub/a.txt", seen.files["sub/a.txt"], max_bytes=1 << 20)


def test_the_walk_never_follows_links_and_reports_special_files(folder: Path, tmp_path: Path) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_bytes(b"x")
    (folder / "dir-link").symlink_to(tmp_path / "outside")
    (folder / "rel-link").symlink_to("a.txt")
    os.mkfifo(folder / "pipe")
    seen = _safefs.walk(folder, skip_dirs=set(), max_entries=100)
    assert set(seen.files) == {"a.txt"}
    assert dict(seen.links) == {"dir-link": True, "rel-link": False}
    assert seen.special == [("pipe", "fifo")]
    many = _safefs.walk(folder, skip_dirs=set(), max_entries=2)
    assert many.truncated


def test_inputs_are_created_without_following_or_replacing_anything(folder: Path, tmp_path: Path) -> None:
    (folder / "link").symlink_to(tmp_path)
    for path in ("link/x.txt", "a.txt", "a.txt/x"):
        with pytest.raises(InvalidInput):
            write_inputs(folder, [InputFile(path=path, content="x")], max_bytes=100)
    assert not (tmp_path / "x.txt").exists() and (folder / "a.txt").read_bytes() == b"decoy"
    assert write_inputs(folder, [InputFile(path="d/e/f.txt", content="ok")], max_bytes=100) == {"d/e/f.txt": b"ok"}
    assert (folder / "d" / "e" / "f.txt").read_bytes() == b"ok"


# ---------------------------------------------------------------- real tasks, both backends

pytestmark_real = pytest.mark.usefixtures("require_claude")


@pytestmark_real
async def test_symlink_swaps_during_collection_never_store_a_host_file(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus, canary: bytes, backend: str
) -> None:
    script = bash_script(background(SYMLINK_RACER, str(canary_path(tmp_path)), "8"))
    run = await run_attack(bus, runner_settings, tmp_path, backend=backend, runner_id=f"r-ws-link-{backend}", script=script)
    assert run.finished.status == "succeeded", run.finished
    assert any(isinstance(e, ToolResult) and "RACER-RUNNING" in e.output for e in run.events), "the racer ran"
    assert run.artifacts, "the decoys are stored"
    for path, data in run.artifacts.items():
        assert canary not in data, f"artifact {path} holds the host secret"
        if path.startswith("out"):
            assert data.startswith(b"decoy")
    refused = [e for e in run.events if isinstance(e, Security) and e.kind == "artifact_refused"]
    assert any("static-link.txt" in e.detail for e in refused), refused
    assert any("sub/dir-link" in e.detail for e in refused), refused
    assert_runner_stayed_responsive(run)


@pytestmark_real
async def test_symlink_swaps_on_a_warm_agent_never_store_a_host_file_though_removal_comes_after_collection(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus, canary: bytes, backend: str
) -> None:
    """On a warm agent the runner collects before the sandbox is removed: what makes that
    safe is that every process of it was SIGKILLed and checked gone first (the racer too)."""
    script = bash_script(background(SYMLINK_RACER, str(canary_path(tmp_path)), "8"))
    run = await run_attack(bus, runner_settings, tmp_path, backend=backend, runner_id=f"r-ws-link-warm-{backend}", script=script, warm=True)
    assert next(e for e in run.events if isinstance(e, Started)).warm is True
    assert run.finished.status == "succeeded", run.finished
    assert any(isinstance(e, ToolResult) and "RACER-RUNNING" in e.output for e in run.events), "the racer ran"
    assert run.artifacts, "the decoys are stored"
    for path, data in run.artifacts.items():
        assert canary not in data, f"artifact {path} holds the host secret"
        if path.startswith("out"):
            assert data.startswith(b"decoy")
    refused = [e for e in run.events if isinstance(e, Security) and e.kind == "artifact_refused"]
    assert any("static-link.txt" in e.detail for e in refused), refused


@pytestmark_real
@pytest.mark.usefixtures("require_docker")
async def test_symlink_swaps_in_a_warm_pool_container_never_store_a_host_file(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus, canary: bytes
) -> None:
    script = bash_script(background(SYMLINK_RACER, str(canary_path(tmp_path)), "8"))
    run = await run_attack(
        bus, runner_settings, tmp_path, backend="docker", runner_id="r-ws-link-pool", script=script, pooled=True, disk_mb=64
    )
    assert run.finished.status == "succeeded", run.finished
    started = next(e for e in run.events if isinstance(e, Started))
    assert started.sandbox_id in run.pooled_ids, "the attack ran in a pooled container"
    # not the out*.txt decoys: killed at the end of a swap pass, every one of them is a link
    assert "racer.ready" in run.artifacts, "the pooled workspace came back to the task and was collected"
    for path, data in run.artifacts.items():
        assert canary not in data, f"artifact {path} holds the host secret"
    refused = [e for e in run.events if isinstance(e, Security) and e.kind == "artifact_refused"]
    assert any("static-link.txt" in e.detail for e in refused), refused
    assert_runner_stayed_responsive(run)


@pytestmark_real
async def test_fifo_and_socket_swaps_never_block_the_runner(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus, backend: str
) -> None:
    script = bash_script(background(SPECIAL_RACER, "6"))
    run = await run_attack(bus, runner_settings, tmp_path, backend=backend, runner_id=f"r-ws-fifo-{backend}", script=script)
    assert run.finished.status == "succeeded", run.finished
    assert any(isinstance(e, ToolResult) and "RACER-RUNNING" in e.output for e in run.events), "the racer ran"
    refused = [e.detail for e in run.events if isinstance(e, Security) and e.kind == "artifact_refused"]
    assert any("direct.fifo.txt: a fifo" in d for d in refused), refused
    assert any(": a socket" in d for d in refused), refused
    for path, data in run.artifacts.items():
        assert path == "racer.ready" or data.startswith(b"file "), f"{path}: only the regular files are stored"
    assert_runner_stayed_responsive(run)


@pytestmark_real
async def test_huge_sparse_files_and_many_small_files_respect_the_caps(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus, backend: str
) -> None:
    settings = msgspec.structs.replace(
        runner_settings, artifact_max_bytes=1 << 20, artifact_max_files=30, artifact_max_total_bytes=4 << 20, workspace_max_entries=3000
    )
    command = (
        "for i in $(seq 40); do truncate -s 60M b-sparse$i.bin || echo TRUNC-FAILED; done; "
        "for i in $(seq 8); do head -c 900000 /dev/urandom > a-mid$i.bin; done; "
        "mkdir many && cd many && seq 1 6000 | xargs touch && cd .. && ls | wc -l && echo MADE"
    )
    run = await run_attack(
        bus, settings, tmp_path, backend=backend, runner_id=f"r-ws-big-{backend}", script=bash_script(command), disk_mb=64
    )
    assert run.finished.status == "succeeded", run.finished
    assert any(isinstance(e, ToolResult) and "MADE" in e.output and "TRUNC-FAILED" not in e.output for e in run.events)
    stored = [e for e in run.events if isinstance(e, Artifact)]
    assert 0 < len(stored) <= 30
    assert not any("sparse" in e.path for e in stored)
    assert sum(e.size for e in stored) <= 4 << 20
    assert sum(e.path.startswith("a-mid") for e in stored) == 4, "the total cap stops the fifth 900 kB file"
    logs = " | ".join(e.line for e in run.events if isinstance(e, Log))
    assert "over the artifact limit" in logs and "entries" in logs
    assert_runner_stayed_responsive(run)


@pytestmark_real
async def test_writes_past_disk_mb_fail_inside_and_the_host_folder_stays_under_it(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus, backend: str
) -> None:
    runner_id = f"r-ws-fill-{backend}"
    command = (
        "for i in 1 2 3 4; do dd if=/dev/zero of=fill$i bs=1M count=40 2>&1 | grep -E 'No space|copied'; done; "
        "touch filled; for i in $(seq 600); do [ -e host-checked ] && break; sleep 0.1; done; "
        "ls host-checked; du -sm . | cut -f1"
    )
    measured: dict[str, int] = {}

    async def measure(job: bus_module.Job, settings: Settings) -> None:
        root = run_root(settings, runner_id)
        async with asyncio.timeout(180):  # the task's own folder, or a warm agent's (TASKBUS_TEST_WARM=1)
            while not (filled := [*root.glob(f"{job.task_id}/workspace/filled"), *root.glob("warm/*/workspace/filled")]):
                await asyncio.sleep(0.1)
        workspace = filled[0].parent
        vfs = os.statvfs(workspace)
        measured["fs_total"] = vfs.f_blocks * vfs.f_frsize
        measured["used"] = sum(os.lstat(p).st_blocks * 512 for p in workspace.iterdir())
        image = workspace.with_name("workspace.img")  # the loop-mounted ext4 image, when there is one
        measured["image"] = os.stat(image).st_blocks * 512 if image.exists() else 0
        measured["mounted"] = int(os.path.ismount(workspace))
        (workspace / "host-checked").write_text("")

    run = await run_attack(
        bus, runner_settings, tmp_path, backend=backend, runner_id=runner_id, script=bash_script(command), during=measure, disk_mb=64
    )
    assert run.finished.status == "succeeded", run.finished
    output = next(e.output for e in run.events if isinstance(e, ToolResult))
    assert "No space left on device" in output, output
    assert measured["mounted"] and measured["fs_total"] <= 64 << 20, measured
    assert 0 < measured["image"] <= 64 << 20, f"a loop-mounted ext4 image holds the workspace: {measured}"
    assert measured["used"] <= 64 << 20, measured
    assert measured["used"] > 48 << 20, "the workspace did fill up"
    assert_runner_stayed_responsive(run)


@pytest.mark.usefixtures("require_bwrap")
async def test_a_restarted_runner_unmounts_workspaces_its_killed_predecessor_left(runner_settings: Settings, tmp_path: Path) -> None:
    from sandbox import Runner
    from sandbox._sandboxes._wsmount import mount_workspace, mounts_under

    require(os.geteuid() == 0, "root", "only a root runner mounts workspaces; run the tests as root")
    root = run_root(runner_settings, "r-ws-restart")
    left = root / "t_killed" / "workspace"
    try:
        assert mount_workspace(left, 16, 1000, 1000) in ("ext4", "tmpfs")
        (left / "work.txt").write_text("left behind")
        assert mounts_under(root) == [left] == mount_points_under(tmp_path)
        async with Runner(runner_settings, backend="bwrap", slots=1, runner_id="r-ws-restart"):
            assert mount_points_under(tmp_path) == []
            assert not (root / "t_killed").exists()
        assert mount_points_under(tmp_path) == [], "the runner's own folders are not mounted after it stops"
    finally:
        detach_all_under(tmp_path)  # whatever happened above, no loop device stays behind


def test_doctor_says_whether_the_workspace_size_is_a_hard_total(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from cli import app

    result = CliRunner().invoke(app, ["doctor", "--json"], env={"TASKBUS_DATA_DIR": str(tmp_path)})
    check = {c["name"]: c for c in json.loads(result.stdout)["checks"]}["workspace size"]
    if os.geteuid() == 0:
        assert check["ok"] and "loop-mounted ext4 filesystem of disk_mb" in check["detail"], check
    else:
        assert not check["ok"] and "NOT in total" in check["detail"] and check["fix"], check


@pytest.mark.parametrize("ext4", [True, False], ids=["ext4", "tmpfs-fallback"])
def test_a_workspace_mount_is_a_hard_total_and_goes_away_whole(tmp_path: Path, ext4: bool) -> None:
    from sandbox._sandboxes._wsmount import image_of, mount_workspace, mounts_under, unmount_all

    require(os.geteuid() == 0, "root", "only a root runner mounts workspaces; run the tests as root")
    workspace = tmp_path / "task" / "workspace"
    if not ext4:
        image_of(workspace).mkdir(parents=True)  # the image cannot be made: the tmpfs of the same size is used
    try:
        assert mount_workspace(workspace, 8, 1000, 1000) == ("ext4" if ext4 else "tmpfs")
        st = os.stat(workspace)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (1000, 1000, 0o700) and os.listdir(workspace) == []
        with pytest.raises(OSError) as full:
            with open(workspace / "fill", "wb") as f:
                for _ in range(16):
                    f.write(b"\0" * (1 << 20))
                    f.flush()
                    os.fsync(f.fileno())
        assert full.value.errno == 28  # ENOSPC
        assert os.path.getsize(workspace / "fill") <= 8 << 20
        if ext4:
            assert os.stat(image_of(workspace)).st_blocks * 512 <= 8 << 20
    finally:
        unmount_all(workspace)
        left = detach_all_under(tmp_path)
    assert left == [] and mounts_under(tmp_path) == [] and os.listdir(workspace) == []
