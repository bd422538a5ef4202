"""Checks ``taskbus doctor`` runs for sandboxes: the image, and which limits are enforced.

Each check returns a dict with the fields of the doctor's ``Check`` (name, ok,
detail, fix, required); the doctor converts them.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

from bus import SandboxUnavailable, Settings

from .._tools import find_bwrap, find_claude
from ._image import find_rootfs, image_tag
from ._limits import cgroup_support
from ._seccomp import sandbox_filter


def _check(name: str, ok: bool, detail: str, fix: str = "", required: bool = True) -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail, "fix": "" if ok else fix, "required": required}


def _docker_image(settings: Settings) -> tuple[bool, str]:
    tag = image_tag(settings)
    try:
        import docker  # noqa: PLC0415 (the Docker SDK is imported only when the Docker backend is used)

        client = docker.from_env(timeout=3)
        try:
            client.images.get(tag)
            return True, f"Docker image {tag}"
        except docker.errors.ImageNotFound:
            return False, f"Docker image {tag} not loaded"
        finally:
            client.close()
    except Exception as exc:
        return False, f"Docker not reachable ({type(exc).__name__})"


def check_image(settings: Settings) -> list[dict[str, Any]]:
    try:
        tree = find_rootfs(settings)
        tree_ok, detail = True, f"root filesystem in {tree}"
        if not tree.is_relative_to(settings.image_cache_path.resolve()):
            detail += f" (an older version's place; `taskbus sandbox build-image` moves it into {settings.image_cache_path})"
    except SandboxUnavailable as exc:
        tree_ok, detail = False, str(exc)  # the doctor's own fix column says what to run
    checks = [_check("sandbox rootfs", tree_ok, detail, "taskbus sandbox build-image", required=settings.sandbox_backend == "bwrap")]
    found, detail = _docker_image(settings)
    checks.append(_check("sandbox image", found, detail, "taskbus sandbox build-image", required=settings.sandbox_backend == "docker"))
    return checks


def image_problem(settings: Settings, backend: str) -> str:
    """Why ``backend`` has no usable sandbox image here (with the fixing command), or ""."""
    if backend == "bwrap":
        try:
            find_rootfs(settings)
        except SandboxUnavailable as exc:
            return exc.describe()
        return ""
    found, detail = _docker_image(settings)
    return "" if found else f"{detail}; run `taskbus sandbox build-image` (with dockerd running)"


def backend_problem(settings: Settings, backend: str) -> str:
    """Why ``backend`` cannot run a task here (with the command that fixes it), or "" when it can.

    What a runner checks before it says ready: Claude Code, bwrap, the image.
    Blocking (it may ask Docker); call it off the event loop."""
    try:
        find_claude(settings)
        if backend == "bwrap":
            find_bwrap()
    except SandboxUnavailable as exc:
        return exc.describe()
    return image_problem(settings, backend)


def check_limits(settings: Settings) -> list[dict[str, Any]]:
    """What the bwrap backend enforces here (Docker enforces all of them itself)."""
    root = os.geteuid() == 0
    support = cgroup_support() if root else {"memory": False, "pids": False, "cpu": False}
    enforced = [f"{c} (cgroup)" for c, ok in support.items() if ok]
    missing = [c for c, ok in support.items() if not ok]
    rlimits = "rlimits nproc, as, fsize, nofile, cpu"
    detail = f"bwrap enforces: {', '.join([*enforced, rlimits])}; tmpfs size limits; no network"
    detail += "; docker enforces: memory (no swap), pids, cpu, tmpfs sizes, ulimits fsize/nofile/cpu; no network"
    if missing:
        detail += f"; NOT enforced by cgroup: {', '.join(missing)} (rlimits only)"
    checks = [
        _check(
            "sandbox limits",
            not missing,
            detail,
            "run the runner as root on a host with the cgroup memory, pids and cpu controllers",
            required=False,
        ),
    ]
    return checks


def check_workspace_size(settings: Settings) -> list[dict[str, Any]]:
    """Whether a task's workspace gets a hard total size (``_wsmount``)."""

    if os.geteuid() != 0:
        return [
            _check(
                "workspace size",
                False,
                "runner is not root: a workspace is a plain folder, capped per file (RLIMIT_FSIZE = disk_mb) but NOT in total",
                "run the runner as root to give each workspace a disk_mb filesystem of its own",
                required=False,
            )
        ]
    ext4 = shutil.which("mkfs.ext4", path="/usr/sbin:/usr/bin:/sbin:/bin") is not None and os.path.exists("/dev/loop-control")
    detail = (
        "each workspace is a loop-mounted ext4 filesystem of disk_mb"
        if ext4
        else "each workspace is a tmpfs of disk_mb (in RAM, charged to the sandbox's memory): mkfs.ext4 or /dev/loop-control is missing"
    )
    return [_check("workspace size", ext4, detail, "install e2fsprogs and make loop devices available", required=False)]


def check_seccomp(settings: Settings) -> list[dict[str, Any]]:
    """bwrap sandboxes need libseccomp to compile their seccomp filter."""

    try:
        size = len(sandbox_filter()) // 8
        ok, detail = True, f"bwrap seccomp filter: {size} instructions (libseccomp)"
    except SandboxUnavailable as exc:
        ok, detail = False, str(exc)
    return [_check("sandbox seccomp", ok, detail, "apt-get install libseccomp2", required=settings.sandbox_backend == "bwrap")]


doctor_checks = [check_image, check_limits, check_workspace_size, check_seccomp]
"""The doctor's extra checks; the lead exports this as ``sandbox.doctor_checks``."""
