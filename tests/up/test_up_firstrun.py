"""A newcomer's first `taskbus up`: a fresh data dir runs a real task with no extra step, a
missing sandbox image stops `up` with the command that builds it, and the runner counts as
ready only when its own heartbeat says its backend can run a task."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import msgspec
from up_kit import TASKBUS

from bus import Bus, Settings, Subjects, decode_heartbeat
from sandbox import Runner, build_image


def _fresh(up_env: dict[str, str]) -> Path:
    """The data dir of up_env without the link to the shared images: nothing but the per-machine cache."""
    data = Path(up_env["TASKBUS_DATA_DIR"])
    (data / "images").unlink()
    return data


def test_up_in_a_fresh_data_dir_runs_the_readme_task_with_no_extra_step(start_up, up_env: dict[str, str]) -> None:
    _fresh(up_env)
    up = start_up()
    state = up.ready_state()
    assert up.child("runner")["state"] == "ready"
    env = {**up_env, "TASKBUS_NATS_URL": state["nats_url"]}
    made = subprocess.run(
        [TASKBUS, "keys", "create", "--profile", "developer", "--json"], env=env, capture_output=True, timeout=60, check=True
    )
    key = json.loads(made.stdout)["key"]
    # The README's example task, offline: the scripted model echoes the description.
    done = subprocess.run(
        [TASKBUS, "submit", "--key", key, "--json", "Write fizzbuzz.py and run it"], env=env, capture_output=True, timeout=300, text=True
    )
    assert done.returncode == 0, done.stdout + done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "succeeded" and summary["result"] == "Write fizzbuzz.py and run it"
    assert "sandbox_unavailable" not in (up.data / "logs" / "runner.log").read_text(errors="replace")


def test_up_without_an_image_and_building_off_stops_with_the_command_that_builds_it(up_env: dict[str, str], tmp_path: Path) -> None:
    data = _fresh(up_env)
    empty = tmp_path / "empty-cache"
    env = {**up_env, "TASKBUS_IMAGE_CACHE_DIR": str(empty), "TASKBUS_UP_BUILD_IMAGE": "false"}
    result = subprocess.run([TASKBUS, "up", "--nats-port", "0", "--backend", "bwrap"], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "taskbus sandbox build-image" in result.stderr and str(empty) in result.stderr
    assert "Traceback" not in result.stderr
    assert not (data / "up.json").exists() and not (data / "up.pid").exists()  # never reported ready
    assert not (data / "logs" / "runner.log").exists()  # stopped before starting anything


async def _beats(settings: Settings, runner_id: str, until, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    """Heartbeats of ``runner_id`` until one satisfies ``until``; returns that one."""
    found: asyncio.Queue = asyncio.Queue()
    subjects = Subjects(settings.subject_prefix)

    async def collect(msg) -> None:  # type: ignore[no-untyped-def]
        found.put_nowait(decode_heartbeat(msg.data))

    async with await Bus.open(settings.nats_url, subjects) as bus:
        await bus.nc.subscribe(subjects.runner(runner_id), cb=collect)
        async with asyncio.timeout(timeout):
            while True:
                beat = await found.get()
                if until(beat):
                    return beat


async def test_a_runner_heartbeats_ready_only_once_its_image_is_there(
    settings: Settings, tmp_path: Path, require_bwrap: None, require_claude: Path
) -> None:
    settings = msgspec.structs.replace(
        settings, image_cache_dir=str(tmp_path / "cache"), heartbeat_s=0.2, claude_path=str(require_claude), sandbox_backend="bwrap"
    )
    async with Runner(settings, runner_id="firstrun-r1", kinds=("task",)) as runner:
        beat = await _beats(settings, runner.id, lambda b: True)
        assert beat.ready is False and "taskbus sandbox build-image" in beat.problem
        assert str(tmp_path / "cache") in beat.problem
        # The image appears (adopted from this machine's cache: no mmdebstrap); no restart needed.
        await asyncio.to_thread(build_image, settings, docker=False)
        beat = await _beats(settings, runner.id, lambda b: b.ready)
        assert beat.problem == "" and runner.backend_ready.is_set()


async def test_a_probe_that_reports_a_problem_stops_the_start_with_that_message(tmp_path: Path) -> None:
    from cli._up import ChildSpec, Supervisor, UpError

    seen: list[int] = []

    async def probe(child) -> bool:  # type: ignore[no-untyped-def]
        seen.append(child.pid)
        raise UpError("runner r1 cannot run tasks: sandbox root filesystem not built; run `taskbus sandbox build-image`")

    spec = ChildSpec(name="runner", argv=["sleep", "600"], env={"PATH": "/usr/bin:/bin"}, probe=probe)
    supervisor = Supervisor([spec], log_dir=tmp_path / "logs")
    try:
        async with supervisor:
            raise AssertionError("the supervisor reported a child ready whose probe reported a problem")
    except UpError as exc:
        assert "taskbus sandbox build-image" in str(exc) and "runner r1 cannot run tasks" in str(exc)
    assert seen and not Path(f"/proc/{seen[0]}").exists()  # the child was stopped, not left running


def test_the_panel_says_why_a_runner_is_not_ready(nats_url: str, subjects: Subjects) -> None:
    from test_up_panel import _info, _text

    from bus._messages import Heartbeat
    from cli._up import StatusBoard

    board = StatusBoard(_info(nats_url, subjects), list)
    board.runners["r1"] = (
        Heartbeat(
            runner_id="r1",
            backend="bwrap",
            slots=2,
            ready=False,
            problem="sandbox root filesystem not built; run `taskbus sandbox build-image`",
        ),
        0.0,
    )
    text = _text(board)
    assert "NOT READY" in text and "taskbus sandbox build-image" in text
    board.runners["r1"] = (Heartbeat(runner_id="r1", backend="bwrap", slots=2, ready=True), 0.0)
    assert "NOT READY" not in _text(board)
