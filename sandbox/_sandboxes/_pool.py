"""Docker warm pool: started, idle containers handed out so start latency is near bwrap's.

Pooled containers are grouped by *class*: the limits plus the mounts fixed at
container creation (project, read-only mounts, whether a socket folder is used).
Each pooled container has its own slot folder ``<data_dir>/sandboxes/pool/<id>/``
with ``workspace/`` (bound at /workspace) and ``run/`` (bound read-only at
/run/taskbus). Containers are never reused: one container, one task, removed on
destroy. On hand-out:

- the content of ``spec.workspace`` is moved into the slot's workspace, and back
  on destroy. A root runner makes each slot's workspace a filesystem of the class's
  ``disk_mb`` (``_wsmount``; the class fixes it); on destroy that mount is bound on
  top of ``spec.workspace`` when that is itself a mount point (the runner's
  per-task filesystem): nothing the sandbox wrote is copied, opened or followed.
- each unix socket in ``spec.socket_dir`` is hard-linked into the slot's ``run/``
  (a hard link reaches the same listening socket), so both must be on one
  filesystem; otherwise the sandbox is created cold;
- ``spec.catalog_files`` are written into the slot's ``catalog/`` folders, bound
  read-only at ~/.claude/agents and ~/.claude/skills in every container (empty until
  then; ``_catalogdir``), emptied again on release;
- ``spec.home_files`` are written into the tmpfs home with one exec.

Labels: ``taskbus.task_id=pool`` (labels cannot change after creation; the task
is recorded in the slot folder), ``taskbus.runner_id`` of the runner that
filled it, ``taskbus.pool=<id>``. The pool fills in tasks it owns; ``close()``
cancels them and removes idle containers.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from . import _labels
from ._agent import wait_for_agent
from ._catalogdir import empty_catalog, fill_catalog
from ._docker_config import container_config, create_started, make_folder, remove_container
from ._host import chown_tree
from ._spec import SANDBOX_GID, SANDBOX_UID, SandboxSpec
from ._wsmount import bind, is_mount, mount_workspace_async, unmount_all

if TYPE_CHECKING:
    from ._docker import DockerBackend

logger = logging.getLogger(__name__)

PoolKey = tuple[Any, ...]


def pool_key(spec: SandboxSpec) -> PoolKey:
    return (spec.limit_class, spec.project, spec.project_writable, spec.ro_mounts, spec.socket_dir is not None)


class Slot:
    def __init__(self, sid: str, folder: Path, container: Any) -> None:
        self.sid = sid
        self.folder = folder
        self.container = container


class WarmPool:
    def __init__(self, backend: DockerBackend, size: int) -> None:
        self._backend = backend
        self._size = size
        self._idle: dict[PoolKey, list[Slot]] = {}
        self._fillers: dict[PoolKey, asyncio.Task[None]] = {}
        self._full: dict[PoolKey, asyncio.Event] = {}
        self._root = _labels.sandboxes_dir(backend.settings.data_path) / "pool"
        self._closed = False
        self._removals: set[asyncio.Task[None]] = set()

    def _ensure_filler(self, key: PoolKey, template: SandboxSpec) -> None:
        task = self._fillers.get(key)
        if self._closed or (task is not None and not task.done()):
            return
        self._full.setdefault(key, asyncio.Event()).clear()
        self._fillers[key] = asyncio.get_running_loop().create_task(self._fill(key, template), name="warm-pool-fill")

    async def _fill(self, key: PoolKey, template: SandboxSpec) -> None:
        idle = self._idle.setdefault(key, [])
        client = await self._backend.client()
        while len(idle) < self._size and not self._closed:
            sid = _labels.new_sandbox_id()
            creating: asyncio.Future[Any] | None = None
            folder = self._root / sid
            try:
                make_folder(folder)
                await mount_workspace_async(folder / "workspace", template.disk_mb, SANDBOX_UID, SANDBOX_GID)
                (folder / "run").mkdir()
                os.chown(folder / "workspace", SANDBOX_UID, SANDBOX_GID)
                os.chmod(folder / "run", 0o755)
                spec = _slot_spec(template, folder)
                labels = self._backend.labels(sid=sid, task_id="pool", runner_id=template.runner_id)
                labels[_labels.LABEL_POOL] = sid
                config = container_config(
                    spec,
                    sid=sid,
                    image=self._backend.image,
                    workspace=str(folder / "workspace"),
                    agent_dir=str(folder / "agent"),
                    labels=labels,
                    catalog=folder / "catalog",
                )
                creating = asyncio.ensure_future(asyncio.to_thread(create_started, client, config))
                container = await asyncio.shield(creating)
                await wait_for_agent(folder)
            except asyncio.CancelledError:
                # The Docker call finishes in its thread anyway: remove what it made.
                made = None
                if creating is not None:
                    try:
                        made = await creating
                    except Exception:
                        pass
                if made is not None:
                    await asyncio.to_thread(_remove_slot, Slot(sid, folder, made))
                remove_slot_folder(folder)
                raise
            except Exception:
                logger.exception("warm pool: creating a container failed; pool stays at %d", len(idle))
                remove_slot_folder(folder)
                break
            idle.append(Slot(sid, folder, container))
        self._full.setdefault(key, asyncio.Event()).set()

    async def prewarm(self, spec: SandboxSpec, *, timeout: float = 60.0) -> int:
        """Fill the pool for ``spec``'s class and wait until it is full; returns its size."""
        key = pool_key(spec)
        self._ensure_filler(key, spec)
        async with asyncio.timeout(timeout):
            await self._full[key].wait()
        return len(self._idle.get(key, []))

    def idle_count(self) -> int:
        """Warm sandboxes waiting to be handed out, over every class."""
        return sum(len(slots) for slots in self._idle.values())

    async def take(self, spec: SandboxSpec) -> Slot | None:
        """A pooled container with ``spec``'s workspace, sockets and catalog handed in, or
        None (then the caller creates one cold). The backend activates it."""
        key = pool_key(spec)
        idle = self._idle.get(key)
        if not idle:
            self._ensure_filler(key, spec)
            return None
        slot = idle.pop(0)
        self._ensure_filler(key, spec)
        try:
            await asyncio.to_thread(_hand_out, slot.folder, spec)
        except OSError as exc:
            logger.info("warm pool: cannot hand out %s (%s); creating cold", slot.sid, exc)
            await asyncio.to_thread(release_workspace, slot.folder, Path(spec.workspace))  # nothing is lost
            await asyncio.to_thread(_remove_slot, slot)
            return None
        return slot

    def remove_later(self, container: Any) -> None:
        """Remove a killed pooled container in the background (``close`` waits for it)."""
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(remove_container, container), name="warm-pool-remove")
        self._removals.add(task)
        task.add_done_callback(self._removals.discard)

    async def close(self) -> None:
        self._closed = True
        if self._removals:
            await asyncio.gather(*self._removals, return_exceptions=True)
        for task in self._fillers.values():
            task.cancel()
        for task in self._fillers.values():
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        slots = [slot for idle in self._idle.values() for slot in idle]
        self._idle.clear()
        for slot in slots:
            await asyncio.to_thread(_remove_slot, slot)


def _slot_spec(template: SandboxSpec, folder: Path) -> SandboxSpec:
    socket_dir = str(folder / "run") if template.socket_dir else None
    return msgspec.structs.replace(
        template, workspace=str(folder / "workspace"), socket_dir=socket_dir, home_files={}, env={}, catalog_files={}
    )


def _hand_out(folder: Path, spec: SandboxSpec) -> None:
    """Move the task's workspace content in, hard-link its gateway sockets, write its
    catalog agents and skills, record the task."""
    if spec.socket_dir:
        for entry in Path(spec.socket_dir).iterdir():
            if stat.S_ISSOCK(entry.lstat().st_mode):
                os.chmod(entry, 0o666)
                os.link(entry, folder / "run" / entry.name)
    target = folder / "workspace"
    source = Path(spec.workspace)
    source.mkdir(parents=True, exist_ok=True)
    for entry in source.iterdir():
        shutil.move(str(entry), str(target / entry.name))
    chown_tree(target, SANDBOX_UID, SANDBOX_GID)
    fill_catalog(folder / "catalog", spec.catalog_files)
    (folder / "task_id").write_text(spec.task_id)


def release_workspace(folder: Path, workspace: Path) -> None:
    """On destroy (nothing runs in the container any more): the slot's workspace back at
    the task's folder, bound when both are mounts, else its content moved; the slot's
    catalog emptied."""
    if (folder / "catalog").is_dir():
        empty_catalog(folder / "catalog")
    source = folder / "workspace"
    workspace.mkdir(parents=True, exist_ok=True)
    if is_mount(source) and is_mount(workspace):
        try:
            bind(source, workspace)
        except OSError as exc:
            logger.warning("warm pool: cannot bind %s back on %s (%s); its files are lost", source, workspace, exc)
    elif source.is_dir():
        for entry in source.iterdir():
            dest = workspace / entry.name
            if dest.exists() or dest.is_symlink():
                continue
            shutil.move(str(entry), str(dest))
    remove_slot_folder(folder)


def remove_slot_folder(folder: Path) -> None:
    """Unmount a slot's workspace and remove its folder (the reaper uses it too)."""
    unmount_all(folder / "workspace")
    shutil.rmtree(folder, ignore_errors=True)


def _remove_slot(slot: Slot) -> None:
    try:
        slot.container.remove(force=True)
    except Exception as exc:
        logger.debug("removing pooled %s: %s", slot.sid, exc)
    remove_slot_folder(slot.folder)
