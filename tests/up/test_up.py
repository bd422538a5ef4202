"""`taskbus up` as a user runs it: restarts a killed child, stops everything on Ctrl-C."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from pathlib import Path

import pytest
from up_kit import TASKBUS, Up, pid_alive, wait_for

from bus import free_port


def _port_listening(port: int) -> bool:
    import socket

    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def _all_pids(up: Up) -> list[int]:
    state = up.state() or {"children": []}
    return [c["pid"] for c in state["children"] if c["pid"]]


def test_up_starts_every_process_and_labels_the_offline_model(start_up) -> None:
    up = start_up()
    state = up.ready_state()
    names = [c["name"] for c in state["children"]]
    assert names == ["nats", "model", "audit", "runner", "server"]
    assert all(c["state"] == "ready" and pid_alive(c["pid"]) for c in state["children"])
    assert state["offline_model"] is True and up.child("model")["label"] == "offline scripted model"
    assert state["mcp_url"].endswith("/mcp") and _port_listening(int(state["mcp_url"].rsplit(":", 1)[1].split("/")[0]))
    text = up.log.read_text()
    assert "offline scripted model" in text and "tb_" in text  # the admin key, printed on first start
    key = next(w for w in text.split() if w.startswith("tb_") and len(w) > 20)
    on_disk = b"".join(p.read_bytes() for p in (up.data / "nats").rglob("*") if p.is_file())
    assert key.encode() not in on_disk and key[11:].encode() not in on_disk  # stored only as a hash
    assert not (up.data / "taskbus.db").exists()  # the control plane is in NATS
    # the printed admin key works: a completion through the stack
    done = subprocess.run(
        [TASKBUS, "submit", "--complete", "--key", key, "--json", "say hi"],
        env={**os.environ, "TASKBUS_DATA_DIR": str(up.data)},
        capture_output=True,
        timeout=300,
        text=True,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert json.loads(done.stdout)["status"] == "succeeded"
    # every child sees the same data dir and NATS, through TASKBUS_* variables
    env = Path(f"/proc/{up.child('runner')['pid']}/environ").read_bytes().split(b"\0")
    assert f"TASKBUS_NATS_URL={state['nats_url']}".encode() in env
    assert f"TASKBUS_UPSTREAM_URL={state['model_url']}".encode() in env
    assert (up.data / "nats-permissions.conf").read_text().count("user:") == 4


def test_up_uses_the_nats_server_it_is_given_instead_of_starting_one(start_up, nats_url: str) -> None:
    up = start_up(env={"TASKBUS_NATS_URL": nats_url, "TASKBUS_SUBJECT_PREFIX": "uptest"})
    state = up.ready_state()
    assert [c["name"] for c in state["children"]] == ["model", "audit", "runner", "server"]
    assert state["nats_url"] == nats_url and state["nats_embedded"] is False
    env = Path(f"/proc/{up.child('server')['pid']}/environ").read_bytes().split(b"\0")
    assert f"TASKBUS_NATS_URL={nats_url}".encode() in env and b"TASKBUS_SUBJECT_PREFIX=uptest" in env


def test_a_second_start_does_not_print_a_new_admin_key(start_up) -> None:
    first = start_up()
    first.ready_state()
    first.proc.send_signal(signal.SIGINT)
    assert first.proc.wait(timeout=60) == 0
    second = start_up()
    second.ready_state()
    text = second.log.read_text()
    assert "First start" not in text and "taskbus keys create --profile admin" in text
    assert not any(w.startswith("tb_") and len(w) > 20 for w in text.split())


def test_a_killed_runner_is_restarted_with_backoff_and_reported(start_up) -> None:
    up = start_up()
    up.ready_state()
    old = up.child("runner")["pid"]
    os.kill(old, signal.SIGKILL)

    def restarted() -> dict | None:
        child = up.child("runner")
        return child if child["restarts"] == 1 and child["state"] == "ready" and child["pid"] != old else None

    child = wait_for("the runner to be restarted", restarted, 60, log=up.log)
    assert pid_alive(child["pid"]) and not pid_alive(old)
    assert f"runner (pid {old}) exited with code -9" in up.log.read_text()
    assert all(up.child(n)["restarts"] == 0 for n in ("nats", "model", "audit", "server"))


def test_processes_left_by_a_killed_supervisor_are_stopped_by_taskbus_down(start_up, up_env) -> None:
    up = start_up()
    up.ready_state()
    pids = _all_pids(up)
    os.kill(up.proc.pid, signal.SIGKILL)  # no chance to clean up
    up.proc.wait()
    assert all(pid_alive(p) for p in pids)  # orphans, until someone stops them
    result = subprocess.run([TASKBUS, "down"], env=up_env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and f"stopped {len(pids)} leftover process(es)" in result.stdout
    assert [p for p in pids if pid_alive(p)] == []


def test_closing_the_terminal_stops_everything_like_ctrl_c(start_up) -> None:
    up = start_up()
    up.ready_state()
    pids = _all_pids(up)
    up.proc.send_signal(signal.SIGHUP)
    assert up.proc.wait(timeout=90) == 0, up.log.read_text()[-3000:]
    assert [p for p in pids if pid_alive(p)] == []
    assert "taskbus up stopped; nothing left running" in up.log.read_text()


def _make_key(data: Path, env: dict[str, str]) -> str:
    out = subprocess.run(
        [TASKBUS, "keys", "create", "--profile", "developer", "--json"], env=env, capture_output=True, timeout=60, check=True
    )
    return json.loads(out.stdout)["key"]


@pytest.mark.parametrize("backend", ["bwrap", "docker"])
def test_ctrl_c_with_a_task_running_leaves_no_process_container_or_socket(
    start_up, up_env: dict[str, str], backend: str, request: pytest.FixtureRequest
) -> None:
    if backend == "docker":
        request.getfixturevalue("require_docker")
    up = start_up("--backend", backend)
    state = up.ready_state()
    env = {**up_env, "TASKBUS_NATS_URL": state["nats_url"]}
    key = _make_key(up.data, env)
    submitted = subprocess.run(
        [TASKBUS, "submit", "--no-wait", "--key", key, "--timeout", "300", "[script:runaway] keep working"],
        env=env,
        capture_output=True,
        timeout=60,
        text=True,
    )
    assert submitted.returncode == 0, submitted.stderr
    task_id = re.search(r"\bt_[0-9a-z]+", submitted.stdout + submitted.stderr).group(0)
    runner_log = up.data / "logs" / "runner.log"
    wait_for(
        "the task to be running in a sandbox",
        lambda: f"task {task_id}) ready" in runner_log.read_text(errors="replace"),
        120,
        log=runner_log,
    )
    pids = _all_pids(up)
    ports = [
        int(state["mcp_url"].rsplit(":", 1)[1].split("/")[0]),
        int(state["nats_url"].rsplit(":", 1)[1]),
        int(state["model_url"].rsplit(":", 1)[1]),
    ]

    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=90) == 0, up.log.read_text()[-3000:]

    assert [p for p in pids if pid_alive(p)] == []
    assert [p for p in ports if _port_listening(p)] == []
    assert not (up.data / "up.pid").exists() and not (up.data / "up.json").exists()
    leftovers = subprocess.run(["pgrep", "-f", str(up.data)], capture_output=True, text=True).stdout.split()
    assert leftovers == []
    sandboxes = up.data / "sandboxes"
    assert not sandboxes.exists() or list(sandboxes.iterdir()) == []
    sockets = [p for p in Path("/tmp").glob(f"taskbus-*/{task_id}/**/*") if p.is_socket()]
    assert sockets == []
    if backend == "docker":
        containers = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=taskbus.task_id={task_id}"], capture_output=True, text=True, check=True
        ).stdout.split()
        assert containers == []
    text = up.log.read_text()
    order = [text.index(f"stopped {name} ") for name in ("server", "runner", "audit", "model", "nats")]
    assert order == sorted(order)


def test_up_refuses_a_taken_mcp_port_with_a_clear_error(up_env: dict[str, str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        result = subprocess.run(
            [TASKBUS, "up", "--nats-port", "0", "--port", str(port)], env=up_env, capture_output=True, text=True, timeout=60
        )
    assert result.returncode == 1
    assert f"port {port}" in result.stderr and "--port" in result.stderr


def test_down_stops_a_detached_stack(up_env: dict[str, str]) -> None:
    env = {**up_env, "TASKBUS_HTTP_PORT": str(free_port())}
    started = subprocess.run([TASKBUS, "up", "--detach", "--nats-port", "0"], env=env, capture_output=True, text=True, timeout=120)
    try:
        assert started.returncode == 0, started.stderr
        assert "running in the background" in started.stderr
        data = Path(env["TASKBUS_DATA_DIR"])
        state = json.loads((data / "up.json").read_text())
        status = json.loads(subprocess.run([TASKBUS, "status", "--json"], env=env, capture_output=True, text=True, timeout=60).stdout)
        assert status["running"] is True and status["mcp_url"] == state["mcp_url"]
        assert (data / "logs" / "up.log").exists()
    finally:
        stopped = subprocess.run([TASKBUS, "down"], env=env, capture_output=True, text=True, timeout=120)
    assert stopped.returncode == 0 and "stopped taskbus up" in stopped.stdout
    assert [c["pid"] for c in state["children"] if pid_alive(c["pid"])] == []
    assert not pid_alive(state["pid"])
