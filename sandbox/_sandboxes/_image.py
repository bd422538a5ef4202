"""The sandbox root filesystem and Docker image, built without any registry.

``build_image(settings)`` runs mmdebstrap once (Debian bookworm with ``PACKAGES``,
a user ``agent`` uid/gid 1000, mount points, no setuid bits, no apt lists, empty
resolv.conf), keeps the tarball and an extracted tree in
``<data_dir>/images/<key>/`` where ``key`` hashes the recipe (suite, packages,
hooks), and loads the tarball into Docker with ``docker import`` as
``taskbus-sandbox:<key>`` (user 1000:1000, workdir /workspace). bwrap sandboxes use
the extracted tree; Docker sandboxes the imported image: the same files.
A second build finds everything in place and does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import msgspec

from bus import SandboxError, SandboxUnavailable, Settings

from ._spec import IMAGE_MOUNT_POINTS, SANDBOX_GID, SANDBOX_UID, WORKSPACE

logger = logging.getLogger(__name__)

SUITE = "bookworm"
VARIANT = "apt"
PACKAGES = ("python3", "bash", "coreutils", "git", "ca-certificates", "ripgrep")
IMAGE_REPO = "taskbus-sandbox"
_MOUNT_POINTS = " ".join(("/workspace", "/project", "/run/taskbus", *IMAGE_MOUNT_POINTS))
HOOKS = (
    f'chroot "$1" useradd -u {SANDBOX_UID} -U -m -d /home/agent -s /bin/bash agent',
    f'mkdir -p "$1"/workspace && chown {SANDBOX_UID}:{SANDBOX_GID} "$1"/workspace',
    f'for d in {_MOUNT_POINTS}; do mkdir -p "$1$d"; done',
    'rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin "$1"/var/cache/apt/archives/*.deb',
    ': > "$1"/etc/resolv.conf; echo sandbox > "$1"/etc/hostname; printf "127.0.0.1 localhost\\n" > "$1"/etc/hosts',
    'find "$1" -xdev -type f -perm /6000 -exec chmod ug-s {} +',
    'chmod 755 "$1"',
)
CHANGES = (f"USER {SANDBOX_UID}:{SANDBOX_GID}", f"WORKDIR {WORKSPACE}", "ENV PATH=/usr/local/bin:/usr/bin:/bin")
MMDEBSTRAP_TIMEOUT_S = 900

Progress = Callable[[str], None]


class ImageInfo(msgspec.Struct, frozen=True, kw_only=True):
    key: str
    tag: str
    folder: str
    rootfs: str
    """The extracted tree bwrap uses as its read-only root."""
    tarball: str
    built: bool
    """True when this call ran mmdebstrap; False when the cache was used."""
    docker_loaded: bool
    seconds: float = 0.0


def image_key() -> str:
    recipe = {"suite": SUITE, "variant": VARIANT, "packages": sorted(PACKAGES), "hooks": HOOKS, "changes": CHANGES}
    return hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]


def image_folder(settings: Settings) -> Path:
    return settings.data_path / "images" / image_key()


def image_tag(settings: Settings) -> str:
    return settings.sandbox_image or f"{IMAGE_REPO}:{image_key()}"


def find_rootfs(settings: Settings) -> Path:
    """The extracted root filesystem, or SandboxUnavailable saying how to build it."""
    tree = image_folder(settings) / "rootfs"
    if not (image_folder(settings) / "image.json").is_file() or not (tree / "usr" / "bin").is_dir():
        raise SandboxUnavailable(
            f"sandbox root filesystem not built (looked in {tree}); run `taskbus sandbox build-image`"
        )
    for rel in ("usr/bin", "etc/shadow"):
        if (tree / rel).stat().st_uid != 0:
            raise SandboxUnavailable(
                f"sandbox root filesystem {tree} was altered ({rel} is not owned by root); "
                "rebuild it with `taskbus sandbox build-image --force`"
            )
    return tree


def build_image(
    settings: Settings,
    *,
    force: bool = False,
    docker: bool = True,
    progress: Progress | None = None,
) -> ImageInfo:
    """Build (or find cached) the root filesystem and, when ``docker``, the Docker image.
    Blocking; call it off the event loop. Raises SandboxUnavailable / SandboxError."""
    say = progress or (lambda message: logger.info("%s", message))
    started = time.monotonic()
    folder = image_folder(settings)
    folder.mkdir(parents=True, exist_ok=True)
    os.chmod(folder, 0o755)
    tarball = folder / "rootfs.tar"
    tree = folder / "rootfs"
    marker = folder / "image.json"
    built = False
    if force or not marker.is_file() or not tarball.is_file() or not tree.is_dir():
        marker.unlink(missing_ok=True)
        _mmdebstrap(tarball, say)
        _extract(tarball, tree, say)
        built = True
    else:
        say(f"root filesystem cached in {folder}")
    loaded = False
    if docker:
        loaded = _docker_import(tarball, image_tag(settings), force=force or built, say=say)
    info = ImageInfo(
        key=image_key(),
        tag=image_tag(settings),
        folder=str(folder),
        rootfs=str(tree),
        tarball=str(tarball),
        built=built,
        docker_loaded=loaded,
        seconds=round(time.monotonic() - started, 2),
    )
    marker.write_bytes(msgspec.json.encode({"key": info.key, "packages": sorted(PACKAGES), "suite": SUITE, "built_at": time.time()}))
    return info


def _mmdebstrap(tarball: Path, say: Progress) -> None:
    exe = shutil.which("mmdebstrap")
    if not exe:
        raise SandboxUnavailable("mmdebstrap not found; install it with `apt-get install mmdebstrap` (or run scripts/setup system)")
    tmp = tarball.with_name("rootfs.partial.tar")
    tmp.unlink(missing_ok=True)
    argv = [exe, "--quiet", f"--variant={VARIANT}", f"--include={','.join(PACKAGES)}"]
    argv += [f"--customize-hook={hook}" for hook in HOOKS]
    argv += [SUITE, str(tmp)]
    say(f"mmdebstrap {SUITE} with {', '.join(PACKAGES)} (about 30 s)")
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=MMDEBSTRAP_TIMEOUT_S, env=_tool_env())
    except subprocess.TimeoutExpired:
        tmp.unlink(missing_ok=True)
        raise SandboxError(f"mmdebstrap did not finish in {MMDEBSTRAP_TIMEOUT_S} s; check the Debian mirror is reachable") from None
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
        raise SandboxError(f"mmdebstrap failed (exit {proc.returncode}); is the Debian mirror reachable? {tail}")
    os.replace(tmp, tarball)
    os.chmod(tarball, 0o644)


def _extract(tarball: Path, tree: Path, say: Progress) -> None:
    say(f"extracting root filesystem for bwrap into {tree}")
    tmp = tree.with_name("rootfs.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    proc = subprocess.run(
        ["tar", "-C", str(tmp), "--numeric-owner", "--same-owner", "-xpf", str(tarball)],
        capture_output=True,
        text=True,
        env=_tool_env(),
    )
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        raise SandboxError(f"extracting {tarball} failed: {proc.stderr.strip()[-300:]}")
    os.chmod(tmp, 0o755)
    if tree.exists():
        shutil.rmtree(tree)
    os.replace(tmp, tree)


def _docker_import(tarball: Path, tag: str, *, force: bool, say: Progress) -> bool:
    try:
        import docker.errors

        import docker

        client = docker.from_env(timeout=300)
        client.ping()
    except Exception as exc:
        say(f"Docker Engine not reachable ({type(exc).__name__}); skipped `docker import` (bwrap can still run)")
        return False
    try:
        if not force:
            try:
                client.images.get(tag)
                say(f"Docker image {tag} already loaded")
                return True
            except docker.errors.ImageNotFound:
                pass
        say(f"docker import {tarball.name} as {tag}")
        repo, _, version = tag.partition(":")
        client.api.import_image_from_file(str(tarball), repository=repo, tag=version or "latest", changes=list(CHANGES))
        client.images.get(tag)
        return True
    except docker.errors.DockerException as exc:
        raise SandboxError(f"docker import of the sandbox image failed: {exc}") from None
    finally:
        client.close()


def _tool_env() -> dict[str, str]:
    """A minimal environment for mmdebstrap/tar: nothing of the runner's leaks in."""
    return {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}
