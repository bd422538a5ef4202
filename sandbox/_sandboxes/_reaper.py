"""The reaper: remove sandboxes whose runner is gone, touching only what we labelled.

Who is reaped: sandboxes whose runner id is not in the live set (runners seen by
heartbeat), and sandboxes with our own runner id but another ``life`` (left by our
previous process). bwrap: SIGKILL the process group recorded in the state folder
(only if that pid still has the recorded start time), kill what is left in the
recorded cgroups (only folders named ``taskbus/<id>``), remove them and the state
folder. Docker: force-remove containers labelled ``taskbus.sandbox=1`` with our
``taskbus.scope`` (data dir) and remove their host folders. Called by runners on start and periodically, and by
``taskbus sandbox prune``.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from pathlib import Path
from typing import Any

from . import _labels
from ._labels import BwrapState
from ._limits import PARENT, Cgroups, remove_cgroup_dirs
from ._pool import remove_slot_folder
from ._protocol import SandboxInfo

logger = logging.getLogger(__name__)

HALF_MADE_GRACE_S = 60.0


def is_orphan(runner_id: str, life: str, live_runner_ids: set[str], own_runner_id: str) -> bool:
    if runner_id == own_runner_id:
        return life != _labels.life_token()
    return runner_id not in live_runner_ids


def _our_cgroups(state: BwrapState) -> list[Path]:
    paths = []
    for raw in state.cgroups:
        path = Path(raw)
        if path.name == state.id and path.parent.name == PARENT and str(path).startswith("/sys/fs/cgroup/"):
            paths.append(path)
    return paths


def remove_bwrap(folder: Path, state: BwrapState | None) -> None:
    if state is not None:
        if state.process_alive():
            try:
                os.killpg(state.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        cgroups = _our_cgroups(state)
        if cgroups:
            Cgroups(cgroups, v2=False).kill_all(timeout=3)
            remove_cgroup_dirs(cgroups, timeout=3)
    shutil.rmtree(folder, ignore_errors=True)


def reap_bwrap(data_path: Path, live_runner_ids: set[str], own_runner_id: str) -> int:
    removed = 0
    for folder, state in _labels.read_states(data_path):
        if state is None:
            try:
                age = time.time() - folder.stat().st_mtime
            except OSError:
                continue
            if age < HALF_MADE_GRACE_S:
                continue
        elif not is_orphan(state.runner_id, state.life, live_runner_ids, own_runner_id):
            continue
        logger.info(
            "reaping bwrap sandbox %s (task %s, runner %s)",
            folder.name,
            state.task_id if state else "?",
            state.runner_id if state else "?",
        )
        remove_bwrap(folder, state)
        removed += 1
    return removed


def list_bwrap(data_path: Path) -> list[SandboxInfo]:
    infos = []
    for folder, state in _labels.read_states(data_path):
        if state is None:
            infos.append(SandboxInfo(id=folder.name, backend="bwrap", task_id="?", runner_id="?", state="stale", created_at=0.0))
            continue
        infos.append(
            SandboxInfo(
                id=state.id,
                backend="bwrap",
                task_id=state.task_id,
                runner_id=state.runner_id,
                state="running" if state.process_alive() else "stale",
                created_at=state.created_at,
                detail=f"pid {state.pid}" if state.pid else "",
            )
        )
    return infos


def reap_docker(client: Any, live_runner_ids: set[str], own_runner_id: str, data_path: Path) -> int:
    """Blocking: remove orphaned labelled containers (and their pool folders)."""
    import docker.errors  # noqa: PLC0415 (the Docker SDK is imported only when the Docker backend is used)

    removed = 0
    containers = client.containers.list(
        all=True,
        filters=_labels.docker_filters(data_path),
        ignore_removed=True,  # one removed meanwhile is no failure
    )
    for container in containers:
        labels = container.labels or {}
        runner = labels.get(_labels.LABEL_RUNNER, "")
        life = labels.get(_labels.LABEL_LIFE, "")
        if not is_orphan(runner, life, live_runner_ids, own_runner_id):
            continue
        logger.info("reaping docker sandbox %s (task %s, runner %s)", container.name, labels.get(_labels.LABEL_TASK), runner)
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        _remove_folders(data_path, labels)
        removed += 1
    return removed


def _remove_folders(data_path: Path, labels: dict[str, str]) -> None:
    slot = labels.get(_labels.LABEL_POOL)
    if slot:
        _remove_pool_folder(data_path, slot)
    sid = labels.get("taskbus.sandbox_id", "")
    folder = _labels.sandboxes_dir(data_path) / sid
    if sid.startswith("tb-") and folder.parent == _labels.sandboxes_dir(data_path):
        shutil.rmtree(folder, ignore_errors=True)


def _remove_pool_folder(data_path: Path, slot: str) -> None:
    root = _labels.sandboxes_dir(data_path) / "pool"
    folder = root / slot
    if folder.parent == root and slot.startswith("tb-"):
        remove_slot_folder(folder)  # its workspace is a mount of its own


def prune_bwrap(data_path: Path, *, everything: bool) -> int:
    removed = 0
    for folder, state in _labels.read_states(data_path):
        if everything or state is None or not state.process_alive():
            remove_bwrap(folder, state)
            removed += 1
    return removed


def prune_docker(client: Any, data_path: Path, *, everything: bool) -> int:
    import docker.errors  # noqa: PLC0415 (the Docker SDK is imported only when the Docker backend is used)

    removed = 0
    for container in client.containers.list(all=True, filters=_labels.docker_filters(data_path), ignore_removed=True):
        if not everything and container.status == "running":
            continue
        try:
            container.remove(force=True)
        except docker.errors.NotFound:
            pass
        _remove_folders(data_path, container.labels or {})
        removed += 1
    return removed
