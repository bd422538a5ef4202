"""Checks ``taskbus doctor`` runs for sandboxes: the image, and which limits are enforced.

Each check returns a dict with the fields of the doctor's ``Check`` (name, ok,
detail, fix, required); the doctor converts them.
"""

from __future__ import annotations

import os
from typing import Any

from bus import Settings

from ._image import image_folder, image_tag
from ._limits import cgroup_support


def _check(name: str, ok: bool, detail: str, fix: str = "", required: bool = True) -> dict[str, Any]:
    return {"name": name, "ok": ok, "detail": detail, "fix": "" if ok else fix, "required": required}


def check_image(settings: Settings) -> list[dict[str, Any]]:
    folder = image_folder(settings)
    tree_ok = (folder / "image.json").is_file() and (folder / "rootfs" / "usr" / "bin").is_dir()
    checks = [
        _check(
            "sandbox rootfs",
            tree_ok,
            f"root filesystem in {folder}" if tree_ok else f"not built ({folder})",
            "taskbus sandbox build-image",
            required=settings.sandbox_backend == "bwrap",
        )
    ]
    tag = image_tag(settings)
    try:
        import docker

        client = docker.from_env(timeout=3)
        try:
            client.images.get(tag)
            found, detail = True, f"Docker image {tag}"
        except docker.errors.ImageNotFound:
            found, detail = False, f"Docker image {tag} not loaded"
        finally:
            client.close()
    except Exception as exc:
        found, detail = False, f"Docker not reachable ({type(exc).__name__})"
    checks.append(
        _check("sandbox image", found, detail, "taskbus sandbox build-image", required=settings.sandbox_backend == "docker")
    )
    return checks


def check_limits(settings: Settings) -> list[dict[str, Any]]:
    """What the bwrap backend enforces here (Docker enforces all of them itself)."""
    root = os.geteuid() == 0
    support = cgroup_support() if root else {"memory": False, "pids": False, "cpu": False}
    enforced = [f"{c} (cgroup)" for c, ok in support.items() if ok]
    missing = [c for c, ok in support.items() if not ok]
    rlimits = "rlimits nproc, as, fsize, nofile, cpu"
    detail = f"bwrap enforces: {', '.join(enforced + [rlimits])}; tmpfs size limits; no network"
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


def check_seccomp(settings: Settings) -> list[dict[str, Any]]:
    """bwrap sandboxes need libseccomp to compile their seccomp filter."""
    from bus import SandboxUnavailable

    from ._seccomp import sandbox_filter

    try:
        size = len(sandbox_filter()) // 8
        ok, detail = True, f"bwrap seccomp filter: {size} instructions (libseccomp)"
    except SandboxUnavailable as exc:
        ok, detail = False, str(exc)
    return [_check("sandbox seccomp", ok, detail, "apt-get install libseccomp2", required=settings.sandbox_backend == "bwrap")]


doctor_checks = [check_image, check_limits, check_seccomp]
"""The doctor's extra checks; the lead exports this as ``sandbox.doctor_checks``."""
