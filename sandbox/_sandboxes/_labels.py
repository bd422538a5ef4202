"""Labels that mark what taskbus created, so the reaper touches nothing else.

Docker objects carry labels (``taskbus.sandbox=1``, ``taskbus.task_id``,
``taskbus.runner_id``, ``taskbus.life``). A bwrap sandbox has a state folder
``<data_dir>/sandboxes/<id>/`` holding ``state.json`` (the same facts plus the
bwrap process id and start time, and its cgroup folders).

``scope`` (a hash of the data dir) keeps runners of different installations on one
Docker host apart: a reaper only looks at containers of its own scope, as bwrap's
only looks at its own data dir.

``life`` identifies one process of a runner (pid and start time): a sandbox whose
runner id is ours but whose life is not is left over from our previous life.
"""

from __future__ import annotations

import hashlib
import os
import secrets
from functools import cache
from pathlib import Path

import msgspec

LABEL_MARK = "taskbus.sandbox"
LABEL_TASK = "taskbus.task_id"
LABEL_RUNNER = "taskbus.runner_id"
LABEL_LIFE = "taskbus.life"
LABEL_POOL = "taskbus.pool"
LABEL_SCOPE = "taskbus.scope"
STATE_FILE = "state.json"


@cache
def life_token() -> str:
    """This process's identity: pid plus its start time (survives nothing but itself)."""
    return f"{os.getpid()}-{process_start(os.getpid()) or secrets.token_hex(4)}"


def process_start(pid: int) -> int | None:
    """Start time (clock ticks since boot) of ``pid``, or None when it does not exist."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def scope_of(data_path: Path) -> str:
    return hashlib.sha256(str(data_path.resolve()).encode()).hexdigest()[:12]


def docker_filters(data_path: Path) -> dict[str, list[str]]:
    """Filters for our containers of this scope."""
    return {"label": [f"{LABEL_MARK}=1", f"{LABEL_SCOPE}={scope_of(data_path)}"]}


def new_sandbox_id() -> str:
    return "tb-" + secrets.token_hex(6)


class BwrapState(msgspec.Struct, kw_only=True):
    id: str
    task_id: str
    runner_id: str
    life: str
    created_at: float
    pid: int = 0
    pid_start: int = 0
    cgroups: list[str] = []
    uid: int = 0

    def process_alive(self) -> bool:
        return bool(self.pid) and process_start(self.pid) == self.pid_start


def sandboxes_dir(data_path: Path) -> Path:
    return data_path / "sandboxes"


def write_state(folder: Path, state: BwrapState) -> None:
    tmp = folder / (STATE_FILE + ".tmp")
    tmp.write_bytes(msgspec.json.encode(state))
    os.replace(tmp, folder / STATE_FILE)


def read_states(data_path: Path) -> list[tuple[Path, BwrapState | None]]:
    """Every bwrap state folder (state None when unreadable: a half-made sandbox)."""
    root = sandboxes_dir(data_path)
    found: list[tuple[Path, BwrapState | None]] = []
    if not root.is_dir():
        return found
    for folder in sorted(root.iterdir()):
        if not folder.name.startswith("tb-") or not folder.is_dir():
            continue
        try:
            state = msgspec.json.decode((folder / STATE_FILE).read_bytes(), type=BwrapState)
        except (OSError, msgspec.DecodeError):
            state = None
        found.append((folder, state))
    return found
