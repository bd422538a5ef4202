"""Docker container configuration and the blocking SDK calls the backend runs in threads."""

from __future__ import annotations

import logging
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from bus import SandboxError, SandboxUnavailable

from ._agent import AGENT_DIR, agent_command
from ._catalogdir import catalog_binds, make_catalog_dirs
from ._spec import (
    CLAUDE_DIR,
    HOME,
    PROJECT,
    SANDBOX_GID,
    SANDBOX_UID,
    SOCKET_MOUNT,
    WORKSPACE,
    SandboxSpec,
    base_env,
    rlimits,
)

logger = logging.getLogger(__name__)

API_TIMEOUT_S = 60


def container_config(
    spec: SandboxSpec, *, sid: str, image: str, workspace: str, agent_dir: str, labels: dict[str, str], catalog: Path
) -> dict[str, Any]:
    """Keyword arguments for ``containers.create`` enforcing the sandbox's limits.
    ``catalog`` is the host folder of ``make_catalog_dirs``: the same two read-only
    binds for every container (pooled or not), so pooled ones stay interchangeable."""
    from docker.types import Mount, Ulimit  # noqa: PLC0415 (the Docker SDK is imported only when the Docker backend is used)

    limits = rlimits(spec)
    mounts = [
        Mount(WORKSPACE, workspace, type="bind", read_only=False),
        Mount(AGENT_DIR, agent_dir, type="bind", read_only=False),
    ]
    if spec.project:
        mounts.append(Mount(PROJECT, spec.project, type="bind", read_only=not spec.project_writable))
    if spec.socket_dir:
        mounts.append(Mount(SOCKET_MOUNT, spec.socket_dir, type="bind", read_only=True))
    for host, target in spec.ro_mounts:
        if not os.path.exists(host):
            raise SandboxError(f"read-only mount source {host} does not exist")
        mounts.append(Mount(target, host, type="bind", read_only=True))
    mounts += [Mount(target, host, type="bind", read_only=True) for host, target in catalog_binds(catalog)]
    disk = f"{spec.disk_mb}m"
    return {
        "image": image,
        "command": agent_command(),
        "name": f"taskbus-{sid}",
        "hostname": "sandbox",
        "user": f"{SANDBOX_UID}:{SANDBOX_GID}",
        "working_dir": WORKSPACE,
        "environment": base_env(spec.env),
        "labels": labels,
        "network_mode": "none",
        "read_only": True,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": spec.pids,
        "mem_limit": f"{spec.memory_mb}m",
        "memswap_limit": f"{spec.memory_mb}m",
        "nano_cpus": int(spec.cpus * 1e9),
        "ipc_mode": "private",
        "shm_size": f"{min(spec.disk_mb, 64)}m",
        "tmpfs": {
            "/tmp": f"rw,nosuid,nodev,size={disk},mode=1777",
            HOME: f"rw,nosuid,nodev,size={disk},mode=0700,uid={SANDBOX_UID},gid={SANDBOX_GID}",
            # a mount point of its own (cannot be renamed away), holding the catalog binds
            CLAUDE_DIR: f"rw,nosuid,nodev,size={disk},mode=0700,uid={SANDBOX_UID},gid={SANDBOX_GID}",
        },
        "mounts": mounts,
        "ulimits": [
            Ulimit(name=name.lower(), soft=soft, hard=hard)
            for name, (soft, hard) in limits.items()
            if name in ("FSIZE", "NOFILE", "CORE", "CPU")
        ],
        "detach": True,
    }


def short_error(exc: BaseException) -> str:
    text = getattr(exc, "explanation", None) or str(exc)
    return str(text)[:300]


def remove_container(container: Any) -> None:
    import docker.errors  # noqa: PLC0415 (the Docker SDK is imported only when the Docker backend is used)

    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass


def make_folder(folder: Path) -> Path:
    """The sandbox's host folder with ``agent/`` (the exec agent's socket, uid 1000 only)
    and the empty ``catalog/{agents,skills}`` (``make_catalog_dirs``)."""

    (folder / "agent").mkdir(parents=True)
    os.chmod(folder, 0o711)
    os.chown(folder / "agent", SANDBOX_UID, SANDBOX_GID)
    os.chmod(folder / "agent", 0o700)
    make_catalog_dirs(folder)
    return folder


def created_at(container: Any) -> float:
    raw = container.attrs.get("Created", "")
    try:
        return datetime.fromisoformat(raw[:26].rstrip("Z") + "+00:00").timestamp()
    except ValueError:
        return 0.0


def connect() -> Any:
    try:
        import docker  # noqa: PLC0415 (the Docker SDK is imported only when the Docker backend is used)

        client = docker.from_env(timeout=API_TIMEOUT_S)
        client.ping()
        return client
    except Exception as exc:
        raise SandboxUnavailable(f"Docker Engine not reachable ({type(exc).__name__}); start dockerd (scripts/setup dockerd)") from None


def check_image(client: Any, tag: str) -> None:
    import docker.errors  # noqa: PLC0415 (the Docker SDK is imported only when the Docker backend is used)

    try:
        client.images.get(tag)
    except docker.errors.ImageNotFound:
        raise SandboxUnavailable(f"sandbox image {tag} not in Docker; run `taskbus sandbox build-image`") from None


def create_started(client: Any, config: dict[str, Any]) -> Any:
    import docker.errors  # noqa: PLC0415 (the Docker SDK is imported only when the Docker backend is used)

    try:
        container = client.containers.create(**config)
    except docker.errors.DockerException as exc:
        raise SandboxError(f"docker could not create the sandbox: {short_error(exc)}") from None
    try:
        container.start()
    except docker.errors.DockerException as exc:
        try:
            container.remove(force=True)
        except docker.errors.DockerException:
            pass
        raise SandboxError(f"docker could not start the sandbox: {short_error(exc)}") from None
    return container
