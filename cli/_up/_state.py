"""The files a running ``taskbus up`` keeps in the data dir: ``up.pid`` and ``up.json``.

``up.json`` (rewritten atomically on every change) says where the stack listens and
what each child is doing; ``taskbus status``, ``taskbus down``, ``taskbus demo`` and the
tests read it. Both files are removed when the supervisor stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import msgspec

from bus import credentials_path

PID_FILE = "up.pid"
STATE_FILE = "up.json"


def pid_path(data: Path) -> Path:
    return data / PID_FILE


def state_path(data: Path) -> Path:
    return data / STATE_FILE


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return True


def running_pid(data: Path) -> int | None:
    """The pid of a live ``taskbus up`` on this data dir, else None (stale files are ignored)."""
    try:
        pid = int(pid_path(data).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if pid_alive(pid) else None


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)
    os.replace(tmp, path)


def write_pid(data: Path) -> None:
    write_atomic(pid_path(data), f"{os.getpid()}\n")


def write_state(data: Path, state: dict[str, Any]) -> None:
    write_atomic(state_path(data), json.dumps(state, indent=2) + "\n")


def read_state(data: Path) -> dict[str, Any] | None:
    try:
        return json.loads(state_path(data).read_text())
    except (OSError, ValueError):
        return None


def stack_settings(settings: Any, state: dict[str, Any], *, role: str = "cli") -> Any:
    """``settings`` made to reach the stack ``state`` describes as ``role`` (the operator's
    ``cli`` user by default): its NATS URL, data dir and that role's credentials file.

    An embedded NATS (``nats_embedded``) has per-role credentials in ``<data>/nats-auth``;
    an operator-run NATS keeps whatever ``settings.nats_credentials`` says."""
    data = Path(state.get("data_dir") or settings.data_path)
    creds = settings.nats_credentials
    if state.get("nats_embedded") and not creds:
        path = credentials_path(data, role)
        creds = str(path) if path.exists() else ""
    return msgspec.structs.replace(settings, nats_url=state["nats_url"], data_dir=str(data), nats_credentials=creds)


def remove_files(data: Path) -> None:
    for path in (pid_path(data), state_path(data)):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


UP_PID_VAR = "_TASKBUS_UP_PID"
"""Set in every child's environment: the supervisor's pid (to find orphans of a dead one)."""


def leftover_pids(data: Path) -> list[int]:
    """Processes a ``taskbus up`` for ``data`` started whose supervisor is gone (it was
    SIGKILLed, or crashed before it could stop them)."""
    wanted = str(data).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            raw = (entry / "environ").read_bytes()
        except OSError:
            continue
        env = dict(item.split(b"=", 1) for item in raw.split(b"\0") if b"=" in item)
        owner = env.get(UP_PID_VAR.encode())
        if owner and env.get(b"TASKBUS_DATA_DIR") == wanted and owner.isdigit() and not pid_alive(int(owner)):
            found.append(int(entry.name))
    return found


def stop_leftovers(data: Path, *, timeout_s: float = 10.0) -> int:
    """SIGTERM the process groups of ``leftover_pids``, SIGKILL what remains after ``timeout_s``."""
    pids = leftover_pids(data)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(os.getpgid(pid), signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while any(pid_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    for pid in pids:
        if pid_alive(pid):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(os.getpgid(pid), signal.SIGKILL)
    return len(pids)
