"""The Docker backend: one container per sandbox, through the docker SDK.

Every container: the ``taskbus-sandbox:<key>`` image (``build_image``), the exec
agent (``_agent.py``) as pid 1, so an exec is a fork inside rather than a ``runc
exec`` (its socket folder is the second writable bind), ``network_mode=none``, read-only
root, tmpfs /tmp and /home/agent (``disk_mb`` each), the workspace as the only
writable bind for files, user 1000:1000, ``cap_drop=ALL``, ``no-new-privileges``, pids,
memory (swap equal: none) and CPU limits, fsize/nofile/core ulimits, an
environment built from scratch, labels ``taskbus.sandbox=1``,
``taskbus.task_id``, ``taskbus.runner_id``, ``taskbus.life``. Blocking SDK calls
run in threads (``asyncio.to_thread``).

Warm pool (``settings.docker_warm_pool`` > 0): see ``_pool.py``. A pooled
container's /workspace is a fresh per-container host folder; ``create`` moves the
content of ``spec.workspace`` into it and ``destroy`` moves everything back, so
callers may keep using ``spec.workspace`` before create and after destroy (while
the sandbox lives, ``sandbox.workspace`` is the folder the agent sees).
"""

from __future__ import annotations

import asyncio
import io
import logging
import os
import shutil
import tarfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from bus import SandboxError, Settings

from . import _labels
from ._agent import AGENT_SOCKET, agent_exec, wait_for_agent
from ._catalogdir import fill_catalog
from ._docker_config import (
    check_image,
    connect,
    container_config,
    create_started,
    created_at,
    make_folder,
    remove_container,
    short_error,
)
from ._exec import Execution
from ._host import prepare_host_dirs
from ._image import image_tag
from ._labels import new_sandbox_id
from ._limits import Cgroups
from ._pool import WarmPool, release_workspace
from ._protocol import Sandbox, SandboxInfo
from ._reaper import prune_docker, reap_docker
from ._spec import (
    HOME,
    SANDBOX_GID,
    SANDBOX_UID,
    SandboxSpec,
    base_env,
)

logger = logging.getLogger(__name__)


class DockerSandbox(Sandbox):
    backend = "docker"

    def __init__(
        self, sandbox_id: str, spec: SandboxSpec, *, client: Any, container: Any, workspace: Path, folder: Path, pool_slot: bool
    ) -> None:
        super().__init__(sandbox_id, spec, workspace)
        self._client = client
        self._container = container
        self._folder = folder
        self._pool_slot = folder if pool_slot else None
        self._remover: Callable[[Any], None] | None = None
        """Set by the warm pool: hands the killed container over for removal in the background."""
        # Connect through an O_PATH fd of the folder: unix socket paths are limited to 108 bytes.
        self._agent_fd = os.open(folder / "agent", os.O_PATH | os.O_CLOEXEC)
        self._agent_socket = f"/proc/self/fd/{self._agent_fd}/{AGENT_SOCKET}"

    @property
    def container_id(self) -> str:
        return self._container.id

    @property
    def oom_killed(self) -> bool:
        """True when the memory limit killed a process (any exec, not only pid 1). Read it
        before destroy (the container's cgroup goes with it)."""
        cid = self._container.id
        for base in ("memory/docker", "memory/system.slice", "docker", "system.slice"):
            for name in (cid, f"docker-{cid}.scope"):
                for knob in ("memory.oom_control", "memory.events"):
                    try:
                        text = Path("/sys/fs/cgroup", base, name, knob).read_text()
                    except OSError:
                        continue
                    counts = dict(line.split(" ", 1) for line in text.splitlines() if " " in line)
                    if counts.get("oom_kill", "0").strip() != "0":
                        return True
        return False

    async def _exec(
        self, argv: list[str], *, env: dict[str, str] | None, stdin: bytes | AsyncIterator[bytes] | None, cwd: str
    ) -> Execution:
        full_env = base_env({**self.spec.env, **(env or {})})
        return await agent_exec(self._agent_socket, argv, env=full_env, stdin=stdin, cwd=cwd, timed_out=lambda: self._timed_out)

    async def wait_ready(self) -> None:
        try:
            await wait_for_agent(self._folder)
        except TimeoutError:
            raise SandboxError(f"sandbox {self.id}: the container's exec agent did not start") from None

    async def put_home_files(self) -> None:
        if not self.spec.home_files:
            return
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for rel, content in self.spec.home_files.items():
                info = tarfile.TarInfo(rel)
                info.size = len(content)
                info.mode = 0o600
                tar.addfile(info, io.BytesIO(content))
        result = await (await self.exec(["tar", "-x", "-C", HOME, "--no-same-owner"], stdin=buf.getvalue(), cwd=HOME)).collect(timeout=30)
        if result.exit_code != 0:
            raise SandboxError(f"writing home files into sandbox {self.id} failed: {result.err[-300:]}")

    def _cgroup(self) -> Path | None:
        """The container's pids (v1) or unified (v2) cgroup folder, when we can see it."""
        cid = self._container.id
        for base in ("pids/docker", "pids/system.slice", "docker", "system.slice"):
            for name in (cid, f"docker-{cid}.scope"):
                path = Path("/sys/fs/cgroup", base, name)
                if (path / "cgroup.procs").exists():
                    return path
        return None

    async def kill(self) -> None:
        """SIGKILL every process of the container straight through its cgroup (fast, needs
        root); otherwise through the Docker API."""
        if await self.stop_all():
            return

        def kill() -> None:
            try:
                self._container.kill()
            except Exception as exc:  # already stopped or gone
                logger.debug("kill %s: %s", self.id, short_error(exc))

        await asyncio.to_thread(kill)

    async def stop_all(self) -> bool:
        path = self._cgroup() if os.geteuid() == 0 else None
        if path is None:
            return False
        cgroup = Cgroups([path], v2=(path / "cgroup.kill").exists())
        return await asyncio.to_thread(cgroup.kill_all, timeout=5)

    async def _teardown(self) -> None:
        await self.kill()
        os.close(self._agent_fd)
        if self._pool_slot is not None:
            await asyncio.to_thread(release_workspace, self._pool_slot, Path(self.spec.workspace))
        if self._remover is not None:
            self._remover(self._container)  # nothing runs in it any more; the pool removes it
            return
        await asyncio.to_thread(remove_container, self._container)
        if self._pool_slot is None:
            await asyncio.to_thread(shutil.rmtree, self._folder, True)


class DockerBackend:
    """Sandboxes as Docker containers, with an optional warm pool."""

    name = "docker"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.image = image_tag(settings)
        self._client: Any = None
        self._image_checked = False
        self._pool: WarmPool | None = None
        self._lock = asyncio.Lock()

    async def client(self) -> Any:
        async with self._lock:
            if self._client is None:
                self._client = await asyncio.to_thread(connect)
            if not self._image_checked:
                await asyncio.to_thread(check_image, self._client, self.image)
                self._image_checked = True
            if self._pool is None and self.settings.docker_warm_pool > 0:
                self._pool = WarmPool(self, self.settings.docker_warm_pool)
            return self._client

    def labels(self, *, sid: str, task_id: str, runner_id: str) -> dict[str, str]:
        return {
            _labels.LABEL_MARK: "1",
            _labels.LABEL_SCOPE: _labels.scope_of(self.settings.data_path),
            _labels.LABEL_TASK: task_id,
            _labels.LABEL_RUNNER: runner_id,
            _labels.LABEL_LIFE: _labels.life_token(),
            "taskbus.sandbox_id": sid,
        }

    async def create(self, spec: SandboxSpec) -> DockerSandbox:
        client = await self.client()
        started = time.monotonic()
        if self._pool is not None and not spec.late_sockets:
            slot = await self._pool.take(spec)
            if slot is not None:
                pooled = DockerSandbox(
                    slot.sid,
                    spec,
                    client=client,
                    container=slot.container,
                    workspace=slot.folder / "workspace",
                    folder=slot.folder,
                    pool_slot=True,
                )
                pooled._remover = self._pool.remove_later
                return await _activate(pooled, started, "docker pool")
        sid = new_sandbox_id()
        folder = make_folder(_labels.sandboxes_dir(self.settings.data_path) / sid)
        try:
            await asyncio.to_thread(prepare_host_dirs, spec, SANDBOX_UID, SANDBOX_GID)
            labels = self.labels(sid=sid, task_id=spec.task_id, runner_id=spec.runner_id)
            fill_catalog(folder / "catalog", spec.catalog_files)
            config = container_config(
                spec,
                sid=sid,
                image=self.image,
                workspace=spec.workspace,
                agent_dir=str(folder / "agent"),
                labels=labels,
                catalog=folder / "catalog",
            )
            container = await asyncio.to_thread(create_started, client, config)
        except BaseException:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        cold = DockerSandbox(sid, spec, client=client, container=container, workspace=Path(spec.workspace), folder=folder, pool_slot=False)
        return await _activate(cold, started, "docker")

    async def prewarm(self, spec: SandboxSpec, *, timeout: float = 60.0) -> int:
        """Fill the warm pool for sandboxes like ``spec`` and wait for it (0 when the pool is off)."""
        await self.client()
        if self._pool is None:
            return 0
        return await self._pool.prewarm(spec, timeout=timeout)

    async def reap(self, live_runner_ids: set[str], own_runner_id: str) -> int:
        client = await asyncio.to_thread(connect)
        try:
            return await asyncio.to_thread(reap_docker, client, live_runner_ids, own_runner_id, self.settings.data_path)
        finally:
            client.close()

    async def prune(self, *, everything: bool = False) -> int:
        """Remove stopped labelled containers (all of them with ``everything``)."""
        client = await asyncio.to_thread(connect)
        try:
            return await asyncio.to_thread(prune_docker, client, self.settings.data_path, everything=everything)
        finally:
            client.close()

    async def list(self) -> list[SandboxInfo]:
        client = await asyncio.to_thread(connect)
        try:
            containers = await asyncio.to_thread(
                client.containers.list, all=True, filters=_labels.docker_filters(self.settings.data_path), ignore_removed=True
            )
        finally:
            client.close()
        infos = []
        for c in containers:
            labels = c.labels or {}
            pooled = labels.get(_labels.LABEL_TASK) == "pool"
            infos.append(
                SandboxInfo(
                    id=labels.get("taskbus.sandbox_id", c.name),
                    backend="docker",
                    task_id=labels.get(_labels.LABEL_TASK, "?"),
                    runner_id=labels.get(_labels.LABEL_RUNNER, "?"),
                    state="pooled" if pooled and c.status == "running" else c.status,
                    created_at=created_at(c),
                    detail=c.short_id,
                )
            )
        return infos

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None
        if self._client is not None:
            self._client.close()
            self._client = None


async def _activate(sandbox: DockerSandbox, started: float, how: str) -> DockerSandbox:
    """The one activation sequence of a started container, pooled or cold: its agent
    answers, its home files are in, its clock runs; destroyed when any of it fails."""
    try:
        await sandbox.wait_ready()
        await sandbox.put_home_files()
    except BaseException:
        await sandbox.destroy()
        raise
    sandbox._start_clock()
    logger.info("sandbox %s (%s, task %s) ready in %.0f ms", sandbox.id, how, sandbox.spec.task_id, (time.monotonic() - started) * 1000)
    return sandbox
