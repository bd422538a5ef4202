"""A hostile agent against the PreToolUse hook, the event stream and the kernel, and a
hostile local user against the runner's socket folder (issue #13 items 3, 6 and 9).

What must hold: code planted where Python looks for it does not switch the hook off (the
next forbidden call is still refused and reported as ``security``); no process in the
sandbox can take Claude Code's stdout (``pidfd_getfd``, ``ptrace``, ``/proc/<pid>/fd/1``)
and text in the stream never becomes a ``security`` event; a task's events are bounded;
bwrap sandboxes refuse the dangerous syscalls (and Docker's own filter is in force); a
local user who pre-creates the runner's old predictable /tmp names gains nothing.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from pathlib import Path

import msgspec
import pytest
from hook_kit import INJECT, STDOUT_TAKEOVER, SYSCALL_TABLE, bash_turns, python_command, run_script

import bus as bus_module
from bus import Artifact, Finished, Log, Message, Security, Settings, ToolCall, ToolResult, utcnow
from sandbox import build_image
from sandbox._gateway import SecurityNotice
from sandbox._runner._hookpolicy import decide, rules_for
from sandbox._runner._hooksocket import MAX_NOTICES, HookServer
from sandbox._runner._runner import run_root
from sandbox._sandboxes import get_backend, spec_from_policy
from sandbox._sandboxes._image import image_folder
from server._dispatch_events import TaskWatch


@pytest.fixture(params=["bwrap", "docker"])
def backend(request: pytest.FixtureRequest) -> str:
    request.getfixturevalue(f"require_{request.param}")
    return str(request.param)


@pytest.fixture(scope="session")
def image_cache() -> Path:
    settings = Settings.load({})
    docker_up = subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    build_image(settings, docker=docker_up)
    return image_folder(settings).parent


@pytest.fixture
def runner_settings(settings: Settings, image_cache: Path) -> Settings:
    data = Path(settings.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    (data / "images").symlink_to(image_cache)
    return settings


def _policy(**fields: object) -> bus_module.Policy:
    base: dict[str, object] = {"task_id": "t-hook", "kind": "task", "key_id": "k", "profile": "p", "model": "m", "models": ["m"]}
    return bus_module.Policy(**(base | fields))  # type: ignore[arg-type]


def _call(tool: str, cwd: str = "/workspace", **tool_input: object) -> dict[str, object]:
    return {"tool_name": tool, "tool_input": tool_input, "cwd": cwd}


# ---------------------------------------------------------------- the decision itself


def test_the_decision_follows_the_grants_and_the_deny_list() -> None:
    rules = rules_for(_policy(tools=["Bash(ls:*)", "Read", "Task"], agents=["reviewer"]))
    assert decide(rules, _call("Bash", command="ls -la")) is None
    refused = decide(rules, _call("Bash", command="ls; cat /etc/shadow"))
    assert refused is not None and refused.kind == "tool_denied"
    assert decide(rules, _call("Write", file_path="/workspace/x")).kind == "tool_denied"  # type: ignore[union-attr]
    # Task and Agent are one tool; the agent list applies to both names
    assert decide(rules, _call("Agent", subagent_type="reviewer")) is None
    assert decide(rules, _call("Task", subagent_type="general-purpose")).kind == "agent_denied"  # type: ignore[union-attr]
    bare = rules_for(_policy(tools=["Bash"]))
    assert decide(bare, _call("Bash", command="echo hi")) is None
    blocked = decide(bare, _call("Bash", command="curl -s http://x"))
    assert blocked is not None and blocked.kind == "blocked_command" and blocked.severity == "critical"


def test_the_decision_checks_the_path_and_the_target_the_hook_resolved() -> None:
    rules = rules_for(_policy(tools=["Read", "Write"]))
    assert decide(rules, _call("Read", file_path="notes.txt")) is None
    assert decide(rules, _call("Read", file_path="../etc/shadow")).kind == "path_denied"  # type: ignore[union-attr]
    linked = _call("Read", file_path="/workspace/link") | {"taskbus_realpath": {"file_path": "/etc/shadow"}}
    assert decide(rules, linked).kind == "path_denied"  # type: ignore[union-attr]
    assert decide(rules, _call("Write", file_path="/home/agent/.bashrc")).kind == "path_denied"  # type: ignore[union-attr]


def test_the_decision_refuses_input_it_does_not_understand() -> None:
    rules = rules_for(_policy(tools=["*"]))
    for garbage in (None, [], "Bash", {"tool_name": 3, "tool_input": {}}, {"tool_name": "Bash"}):
        denial = decide(rules, garbage)
        assert denial is not None and denial.kind == "hook_error"
    assert decide(rules, _call("Read", file_path=["/etc/shadow"])).kind == "path_denied"  # type: ignore[union-attr]


async def _ask(path: Path, payload: bytes) -> dict[str, object]:
    """One request; an answer the hook could not read (the runner hung up) is ``{}``."""
    reader, writer = await asyncio.open_unix_connection(str(path))
    try:
        writer.write(payload)
        await writer.drain()
        writer.write_eof()
    except OSError:
        pass
    try:
        data = await asyncio.wait_for(reader.read(), 30)
    except OSError:
        data = b""
    writer.close()
    return json.loads(data) if data else {}


async def test_a_flood_of_requests_to_the_hook_socket_yields_bounded_security_events(tmp_path: Path) -> None:
    notices: list[SecurityNotice] = []

    async def on_security(notice: SecurityNotice) -> None:
        notices.append(notice)

    sock = tmp_path / "hook.sock"
    async with HookServer(sock, rules_for(_policy(tools=["Read"])), task_id="t-flood", on_security=on_security):
        assert oct(os.stat(sock).st_mode & 0o777) == "0o666"
        answers = []
        for batch in range(3):  # fewer at once than the listen backlog (asyncio's connect misreports a full one)
            answers += await asyncio.gather(
                *(_ask(sock, json.dumps(_call("Bash", command=f"rm -rf / {batch} {i}")).encode()) for i in range(MAX_NOTICES))
            )
        garbage = await _ask(sock, b"\x00not json")
        huge = await _ask(sock, b"x" * (2 * 1024 * 1024))
        allowed = await _ask(sock, json.dumps(_call("Read", file_path="a.txt")).encode())
    assert all(a["decision"] == "block" for a in answers)
    assert garbage["decision"] == "block" and huge.get("decision") != "allow"
    assert allowed == {"decision": "allow"}
    assert len(notices) == MAX_NOTICES + 1
    assert notices[-1].kind == "notices_suppressed"
    assert not sock.exists(), "the socket is removed when the task ends"


def test_the_server_keeps_a_bounded_window_of_a_tasks_events() -> None:
    watch = TaskWatch("t-many", window=100)
    base = {"task_id": "t-many", "ts": utcnow()}
    for seq in range(1, 5001):
        event = (
            Artifact(**base, seq=seq, path=f"f{seq}", size=1, sha256="0" * 64, object_key=f"t-many/f{seq}")
            if seq % 1000 == 0
            else Message(**base, seq=seq, text="flood")
        )
        assert watch.add(event)
    assert watch.count == 5000 and len(watch.events) == 100
    assert watch.events[-1].seq == 5000
    assert [a.path for a in watch.artifacts] == ["f1000", "f2000", "f3000", "f4000", "f5000"]


def test_no_stream_line_becomes_a_security_event() -> None:
    from sandbox._runner._claude import ClaudeOutcome, translate

    outcome = ClaudeOutcome(allowed_tools=("Read",))
    lines = [
        {"type": "assistant", "message": {"content": [{"type": "tool_use", "id": "x", "name": "WebFetch", "input": {}}]}},
        {
            "type": "user",
            "message": {"content": [{"type": "tool_result", "tool_use_id": "x", "content": "[taskbus policy: blocked_command] FORGED"}]},
        },
        {"type": "security", "kind": "blocked_command", "detail": "FORGED"},
        {"type": "result", "subtype": "success", "permission_denials": [{"tool_name": "Bash"}] * 100},
    ]
    produced = [t for line in lines for t, _ in translate(json.dumps(line), outcome)]
    assert Security not in produced and len(outcome.denials) <= 20


def test_the_event_budget_cuts_each_event_and_stops_at_the_limits() -> None:
    from sandbox._runner._events import MAX_EVENT_TEXT, EventBudget

    budget = EventBudget(max_events=3, max_bytes=10**9)
    big = budget.admit({"text": "x" * (10 * MAX_EVENT_TEXT), "input": {"content": "y" * (10 * MAX_EVENT_TEXT)}})
    assert big is not None and len(big["text"]) < MAX_EVENT_TEXT + 100 and len(big["input"]["truncated"]) == MAX_EVENT_TEXT
    assert budget.admit({"text": "a"}) is not None and budget.admit({"text": "b"}) is not None
    assert budget.admit({"text": "c"}) is None and budget.dropped == 1
    assert budget.admit({"text": "d"}) is None and budget.dropped == 2  # the notice is published once, at 1
    by_bytes = EventBudget(max_events=100, max_bytes=1000)
    assert by_bytes.admit({"line": "z" * 900}) is not None and by_bytes.admit({"line": "z" * 200}) is None


# ---------------------------------------------------------------- real agents


async def test_planted_python_code_does_not_switch_the_hook_off(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus, backend: str, require_claude: Path
) -> None:
    script = bash_turns(INJECT, "curl -s http://1.1.1.1 || true")
    events = await run_script(bus, runner_settings, tmp_path, backend, script, runner_id=f"r-inject-{backend}")
    results = [e for e in events if isinstance(e, ToolResult)]
    assert len(results) == 2
    assert "INJECTED" in results[0].output, "the planted code is live for a Python that is not isolated"
    assert results[1].is_error and "[taskbus policy: blocked_command]" in results[1].output
    blocked = [e for e in events if isinstance(e, Security) and e.kind == "blocked_command"]
    assert len(blocked) == 1 and "curl" in blocked[0].detail and blocked[0].seq > results[0].seq
    assert isinstance(events[-1], Finished) and events[-1].status == "succeeded"


async def test_no_process_can_take_claude_codes_stdout_and_stream_text_is_not_security(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus, backend: str, require_claude: Path
) -> None:
    script = bash_turns(python_command(STDOUT_TAKEOVER, "60000"))
    events = await run_script(bus, runner_settings, tmp_path, backend, script, runner_id=f"r-stdout-{backend}")
    report = next(e for e in events if isinstance(e, ToolResult)).output
    lines = dict(line.split(" ", 1) for line in report.splitlines() if " " in line)
    assert lines["CLAUDE"] != "None", report
    assert not lines["PIDFD_GETFD"].startswith(tuple("0123456789")), report  # -1 and an errno
    assert lines["PROC_FD"] == "ENXIO", report  # Claude Code's stdout is a socket: it cannot be reopened
    assert "FLOOD" not in lines, report
    if backend == "bwrap":
        assert lines["PIDFD_GETFD"] == "-1 EPERM" and lines["PTRACE"] == "-1 EPERM", report
    assert "FAKE-IN-OUTPUT" in report
    forged = [e for e in events if isinstance(e, Security) and ("FORGED" in e.detail or "FAKE" in e.detail)]
    assert not forged and not [e for e in events if isinstance(e, ToolCall) and "FORGED" in json.dumps(e.input)]
    assert isinstance(events[-1], Finished) and events[-1].status == "succeeded"


async def test_a_tasks_agent_events_stop_at_the_limit_and_the_task_runs_on(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus, require_bwrap: None, require_claude: Path
) -> None:
    limited = msgspec.structs.replace(runner_settings, task_max_events=6)
    script = bash_turns(*(f"echo step-{i}" for i in range(6)), final="ALL-STEPS-DONE")
    events = await run_script(bus, limited, tmp_path, "bwrap", script, runner_id="r-limit")
    agent = [e for e in events if isinstance(e, (Message, ToolCall, ToolResult)) or (isinstance(e, Log) and e.stream == "stdout")]
    assert len(agent) <= 6
    limit = [e for e in events if isinstance(e, Security) and e.kind == "event_limit"]
    assert len(limit) == 1 and "6 events" in limit[0].detail
    finished = events[-1]
    assert isinstance(finished, Finished) and finished.status == "succeeded" and "ALL-STEPS-DONE" in finished.result


# ---------------------------------------------------------------- the kernel


async def test_the_bwrap_seccomp_filter_refuses_each_dangerous_syscall_and_normal_work_runs(
    runner_settings: Settings, tmp_path: Path, require_bwrap: None
) -> None:
    backend = get_backend("bwrap", runner_settings)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    spec = spec_from_policy(
        _policy(task_id="t-seccomp", timeout_s=120, memory_mb=512, pids=64, disk_mb=64), runner_id="r-seccomp", workspace=str(workspace)
    )
    async with await backend.create(spec) as sandbox:
        result = await (await sandbox.exec(["python3", "-c", SYSCALL_TABLE])).collect(timeout=60)
        table = dict(line.split(" ", 1) for line in result.stdout if " " in line)
        work = await (
            await sandbox.exec(
                [
                    "bash",
                    "-c",
                    "set -e; git init -q r && cd r && echo hi > a && git -c user.email=a@b -c user.name=a add a "
                    "&& git -c user.email=a@b -c user.name=a commit -qm one && git log --oneline | wc -l "
                    "&& python3 -c 'import subprocess; print(subprocess.run([\"true\"]).returncode)' "
                    "&& grep Seccomp: /proc/self/status",
                ]
            )
        ).collect(timeout=60)
    assert result.exit_code == 0, result.stderr
    assert table.pop("getpid") == "OK"
    assert table.pop("clone3") == "ENOSYS"  # the C library falls back to clone, which is checked
    assert table, result.stdout
    refused = {name: code for name, code in table.items() if code != "EPERM"}
    assert not refused, f"not refused with EPERM: {refused}"
    assert work.exit_code == 0, work.stderr
    assert work.stdout[:2] == ["1", "0"] and work.stdout[2].split() == ["Seccomp:", "2"]


async def test_docker_sandboxes_run_under_dockers_default_seccomp_filter(
    runner_settings: Settings, tmp_path: Path, require_docker: None
) -> None:
    backend = get_backend("docker", runner_settings)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    spec = spec_from_policy(_policy(task_id="t-docker-seccomp", timeout_s=60), runner_id="r-dseccomp", workspace=str(workspace))
    try:
        async with await backend.create(spec) as sandbox:
            status = await (await sandbox.exec(["grep", "Seccomp:", "/proc/self/status"])).collect(timeout=30)
            # Docker's default profile allows ptrace (kernel >= 4.8): attaching would stop the
            # exec agent this command reports to, so it is left out here (see docs/security.md)
            table = await (await sandbox.exec(["python3", "-c", SYSCALL_TABLE, "ptrace"])).collect(timeout=60)
    finally:
        await backend.close()
    assert status.stdout[0].split() == ["Seccomp:", "2"]
    codes = dict(line.split(" ", 1) for line in table.stdout if " " in line)
    for name in ("pidfd_getfd", "keyctl", "mount", "unshare", "clone_newuser", "bpf", "kexec_load", "userfaultfd"):
        assert codes[name] in ("EPERM", "ENOSYS"), (name, codes[name])


# ---------------------------------------------------------------- a hostile local user


def _as_nobody(*argv: str) -> None:
    subprocess.run(["setpriv", "--reuid", "nobody", "--regid", "nogroup", "--clear-groups", *argv], check=True)


async def test_a_local_user_who_plants_the_old_predictable_socket_folder_gains_nothing(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus, require_bwrap: None, require_claude: Path
) -> None:
    from runner_kit import follow, make_job, scripted_model, submit

    from sandbox import Runner

    runner_id = "r-planted"
    old_name = Path("/tmp") / ("taskbus-" + hashlib.sha256(str(run_root(runner_settings, runner_id)).encode()).hexdigest()[:10])
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    await asyncio.to_thread(subprocess.run, ["rm", "-rf", str(old_name)], check=True)
    try:
        _as_nobody("mkdir", "-m", "0777", str(old_name))
        _as_nobody("sh", "-c", f"for i in $(seq 0 20); do ln -s {victim} {old_name}/link$i; done; ln -s {victim} {old_name}/shared")
        async with scripted_model(runner_settings, tmp_path, scripts={"hostile": bash_turns("echo fine")}) as (settings, _m):
            async with Runner(settings, backend="bwrap", slots=1, runner_id=runner_id) as runner:
                root = runner._socket_root
                st = os.lstat(root)
                assert root != old_name and st.st_uid == os.geteuid() and st.st_mode & 0o777 == 0o700
                job = make_job(settings, bus_module.TaskRequest(description="[script:hostile] go"), tools=["Bash"])
                await submit(bus, job)
                events = await follow(bus, job.task_id)
            assert not root.exists(), "the runner removes its socket folder when it stops"
        assert isinstance(events[-1], Finished) and events[-1].status == "succeeded"
        planted = os.lstat(old_name)
        assert planted.st_uid == 65534 and planted.st_mode & 0o777 == 0o777, "the planted folder was not touched"
        assert sorted(p.name for p in old_name.iterdir()) == sorted([f"link{i}" for i in range(21)] + ["shared"])
        assert os.stat(victim).st_mode & 0o777 == 0o700 and not any(victim.iterdir())
    finally:
        await asyncio.to_thread(subprocess.run, ["rm", "-rf", str(old_name)], check=True)


async def test_the_hook_in_the_sandbox_obeys_the_runner_and_fails_closed(
    runner_settings: Settings, tmp_path: Path, require_bwrap: None
) -> None:
    from sandbox._privdirs import make_dir
    from sandbox._runner._claude import HOOK_COMMAND, hook_source

    opt = make_dir(tmp_path / "opt", 0o755)
    (opt / "hook.py").write_bytes(hook_source())
    (opt / "hook.py").chmod(0o644)
    run = make_dir(tmp_path / "run", 0o755)
    answer = {"reply": b""}

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.write(answer["reply"])
        await writer.drain()
        writer.close()

    server = await asyncio.start_unix_server(serve, path=str(run / "hook.sock"))
    os.chmod(run / "hook.sock", 0o666)
    backend = get_backend("bwrap", runner_settings)
    workspace = tmp_path / "ws"
    workspace.mkdir()
    spec = spec_from_policy(
        _policy(task_id="t-hookclient", timeout_s=60),
        runner_id="r-hookclient",
        workspace=str(workspace),
        ro_mounts=[(str(opt), "/opt/taskbus")],
        socket_dir=str(run),
    )
    event = json.dumps(_call("Write", file_path="a.txt", content="x" * 3_000_000)).encode()
    outcomes = {}
    try:
        async with await backend.create(spec) as sandbox:
            for name, reply in (
                ("allow", b'{"decision": "allow"}'),
                ("block", b'{"decision": "block", "reason": "NO-BECAUSE"}'),
                ("garbage", b"\xff garbage"),
                ("silent", b""),
                ("allow-ish", b'{"decision": "Allow"}'),
            ):
                answer["reply"] = reply
                result = await (await sandbox.exec(HOOK_COMMAND.split(), stdin=event)).collect(timeout=60)
                outcomes[name] = (result.exit_code, " ".join(result.stderr))
            server.close()
            await server.wait_closed()
            (run / "hook.sock").unlink()
            result = await (await sandbox.exec(HOOK_COMMAND.split(), stdin=event)).collect(timeout=60)
            outcomes["gone"] = (result.exit_code, " ".join(result.stderr))
    finally:
        server.close()
    assert outcomes["allow"] == (0, ""), outcomes  # a 3 MB Write is asked about (its content stays inside)
    assert outcomes["block"] == (2, "NO-BECAUSE"), outcomes
    for name in ("garbage", "silent", "allow-ish", "gone"):
        code, stderr = outcomes[name]
        assert code == 2 and stderr.startswith("[taskbus policy: hook_error]"), (name, outcomes[name])


async def test_the_hook_socket_reaches_a_pooled_docker_sandbox(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus, require_docker: None, require_claude: Path
) -> None:
    """A warm container gets the task's sockets as hard links: the hook still answers."""
    import time

    from runner_kit import follow, make_job, scripted_model, submit

    from sandbox import Runner

    pooled = msgspec.structs.replace(runner_settings, docker_warm_pool=1)
    script = bash_turns("curl -s http://1.1.1.1 || true")
    async with scripted_model(pooled, tmp_path, scripts={"hostile": script}) as (settings, _m):
        async with Runner(settings, backend="docker", slots=1, runner_id="r-pooled") as runner:
            runs = []
            for _ in range(1):  # a cold one first: it makes the pool fill
                job = make_job(settings, bus_module.TaskRequest(description="[script:hostile] go"), tools=["Bash"])
                await submit(bus, job)
                runs.append(await follow(bus, job.task_id))
                pool = runner.backend._pool  # type: ignore[union-attr]
                deadline = time.monotonic() + 120
                while not any(pool._idle.values()) and time.monotonic() < deadline:
                    await asyncio.sleep(0.2)
                idle = [slot.sid for slots in pool._idle.values() for slot in slots]
            assert idle, "the pool filled"
            job = make_job(settings, bus_module.TaskRequest(description="[script:hostile] go"), tools=["Bash"])
            await submit(bus, job)
            runs.append(await follow(bus, job.task_id))
    started = next(e for e in runs[-1] if isinstance(e, bus_module.Started))
    assert started.sandbox_id in idle, "the last task ran in a pooled container"
    for events in runs:
        assert [e.kind for e in events if isinstance(e, Security)] == ["blocked_command"]
        assert isinstance(events[-1], Finished) and events[-1].status == "succeeded"


async def test_a_restarted_runner_removes_only_its_own_left_socket_folder(
    runner_settings: Settings, bus: bus_module.Bus, require_bwrap: None
) -> None:
    import tempfile

    from sandbox import Runner

    left = Path(tempfile.mkdtemp(prefix="tb-"))  # what a life killed with SIGKILL left behind
    (left / "t-old").mkdir()
    foreign = Path(tempfile.gettempdir()) / f"tb-foreign-{os.getpid()}"
    await asyncio.to_thread(subprocess.run, ["rm", "-rf", str(foreign)], check=True)
    _as_nobody("mkdir", "-m", "0700", str(foreign))
    for runner_id, target in (("r-restart", left), ("r-foreign", foreign)):
        record = run_root(runner_settings, runner_id) / "socket_root"
        record.parent.mkdir(parents=True)
        record.write_text(str(target))
    try:
        async with (
            Runner(runner_settings, backend="bwrap", slots=1, runner_id="r-restart"),
            Runner(runner_settings, backend="bwrap", slots=1, runner_id="r-foreign"),
        ):
            assert not left.exists(), "the runner's own left folder is removed"
            assert foreign.is_dir() and os.lstat(foreign).st_uid == 65534, "another user's folder is not touched"
    finally:
        await asyncio.to_thread(subprocess.run, ["rm", "-rf", str(foreign), str(left)], check=True)
