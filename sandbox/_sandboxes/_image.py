"""The sandbox root filesystem and Docker image, built without any registry.

``build_image(settings)`` runs mmdebstrap once (Debian bookworm with ``PACKAGES``,
a user ``agent`` uid/gid 1000, mount points, no setuid bits, no apt lists, empty
resolv.conf), keeps the tarball and an extracted tree in
``<image_cache_dir>/images/<key>/`` where ``key`` hashes the recipe (suite, packages,
hooks), and loads the tarball into Docker with ``docker import`` as
``taskbus-sandbox:<key>`` (user 1000:1000, workdir /workspace). bwrap sandboxes use
the extracted tree; Docker sandboxes the imported image: the same files.
A second build finds everything in place and does nothing.

The cache is per machine, shared by every data dir (``Settings.image_cache_dir``).
Images older versions built in ``<data_dir>/images/<key>`` are still used, and a build
adopts one (or the default cache's, when the cache was moved) with hard links instead of
running mmdebstrap again. The runner
is root and bwrap uses the tree as the sandbox's root: every folder from ``/`` down to the
tree must be owned by root (or the runner's own user) and writable by nobody else (a
sticky folder such as /tmp is fine), else a local user could plant a root filesystem.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import stat
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
    """Where this recipe's image lives in the per-machine cache."""
    return settings.image_cache_path / "images" / image_key()


def adoptable_folders(settings: Settings) -> list[Path]:
    """Images a build can adopt instead of running mmdebstrap: the default cache (when this
    one is elsewhere), then where older versions kept it (this data dir, the default one)."""
    defaults = Settings()
    folders = [image_folder(defaults), settings.data_path / "images" / image_key(), defaults.data_path / "images" / image_key()]
    return list(dict.fromkeys(folders))


def image_tag(settings: Settings) -> str:
    return settings.sandbox_image or f"{IMAGE_REPO}:{image_key()}"


def _owners() -> set[int]:
    return {0} if os.geteuid() == 0 else {0, os.geteuid()}


def untrusted_reason(path: Path) -> str:
    """Why ``path`` (resolved) could be changed by someone other than root or us; "" if it cannot."""
    owners = _owners()
    try:
        real = path.resolve(strict=True)
    except OSError as exc:
        return f"{path} is not there ({exc.strerror})"
    for folder in (real, *real.parents):
        info = folder.lstat()
        if info.st_uid not in owners:
            return f"{folder} is owned by uid {info.st_uid}"
        if info.st_mode & 0o022 and not (stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX):
            return f"{folder} is writable by group or others (mode {stat.S_IMODE(info.st_mode):o})"
    return ""


def _complete(folder: Path) -> bool:
    return (folder / "image.json").is_file() and (folder / "rootfs" / "usr" / "bin").is_dir()


def _checked_tree(folder: Path) -> Path:
    """The resolved rootfs of a complete image folder, or SandboxUnavailable if anyone else could alter it."""
    tree = (folder / "rootfs").resolve()
    problem = untrusted_reason(tree)
    for rel in ("usr", "usr/bin", "etc", "etc/shadow"):
        if problem:
            break
        info = (tree / rel).lstat()
        if info.st_uid not in _owners() or info.st_mode & 0o022:
            problem = f"{tree / rel} is owned by uid {info.st_uid}, mode {stat.S_IMODE(info.st_mode):o}"
    if problem:
        raise SandboxUnavailable(
            f"sandbox root filesystem {tree} is not safe to use ({problem}); remove it and rebuild it "
            "with `taskbus sandbox build-image --force`"
        )
    return tree


def find_rootfs(settings: Settings) -> Path:
    """The extracted root filesystem (resolved), or SandboxUnavailable saying how to build it.

    The per-machine cache first, then the data dir where older versions built it."""
    for folder in (image_folder(settings), settings.data_path / "images" / image_key()):
        if _complete(folder):
            return _checked_tree(folder)
    raise SandboxUnavailable(
        f"sandbox root filesystem not built (looked in {image_folder(settings)}); run `taskbus sandbox build-image` (about 35 s)"
    )


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
    folder = _make_cache_folder(settings)
    tarball = folder / "rootfs.tar"
    tree = folder / "rootfs"
    marker = folder / "image.json"
    built = False
    if force or not marker.is_file() or not tarball.is_file() or not tree.is_dir():
        marker.unlink(missing_ok=True)
        if force or not _adopt(settings, folder, say):
            _mmdebstrap(tarball, say)
            _extract(tarball, tree, say)
            built = True
    else:
        say(f"root filesystem cached in {folder}")
    _checked_tree(folder)
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


def _make_cache_folder(settings: Settings) -> Path:
    """Create the cache folder (mode 755) and refuse a cache someone else could write to."""
    folder = image_folder(settings)
    for level in (settings.image_cache_path, folder.parent, folder):
        if not level.exists():
            level.mkdir(mode=0o755, parents=True)
            os.chmod(level, 0o755)
    problem = untrusted_reason(folder)
    if problem:
        raise SandboxUnavailable(
            f"sandbox image cache {folder} is not safe to use ({problem}); point TASKBUS_IMAGE_CACHE_DIR "
            "at a folder only root (or the runner's user) can write"
        )
    return folder


def _adopt(settings: Settings, folder: Path, say: Progress) -> bool:
    """Hard-link an image built elsewhere on this machine into the cache; False if none fits."""
    for old in adoptable_folders(settings):
        if old.resolve() == folder.resolve() or not (_complete(old) and (old / "rootfs.tar").is_file()):
            continue
        try:
            _checked_tree(old)
        except SandboxUnavailable as exc:
            say(f"not adopting {old}: {exc.describe()}")
            continue
        say(f"adopting the image built in {old} (hard links; nothing rebuilt)")
        for name in ("rootfs.tar", "rootfs"):
            tmp = folder / f"{name}.partial"
            _remove(tmp)
            proc = subprocess.run(
                ["cp", "-a", "--link", str(old / name), str(tmp)], capture_output=True, text=True, env=_tool_env(), check=False
            )
            if proc.returncode != 0:  # another file system: copy
                _remove(tmp)
                proc = subprocess.run(["cp", "-a", str(old / name), str(tmp)], capture_output=True, text=True, env=_tool_env(), check=False)
                if proc.returncode != 0:
                    _remove(tmp)
                    raise SandboxError(f"copying {old / name} into {folder} failed: {proc.stderr.strip()[-300:]}")
            _remove(folder / name)
            os.replace(tmp, folder / name)
        return True
    return False


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


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
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=MMDEBSTRAP_TIMEOUT_S, env=_tool_env(), check=False)
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
        check=False,
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
        import docker.errors  # noqa: PLC0415 (the Docker SDK is imported only when the Docker backend is used)

        import docker  # noqa: PLC0415 (the Docker SDK is imported only when the Docker backend is used)

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
