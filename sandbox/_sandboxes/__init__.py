"""Sandboxes: one task, one sandbox it cannot leave (bubblewrap or Docker).

from sandbox._sandboxes import get_backend, spec_from_policy
backend = get_backend(settings.sandbox_backend, settings)
spec = spec_from_policy(policy, runner_id=rid, workspace=str(ws), ro_mounts=[(claude_dir, "/opt/claude")])
async with await backend.create(spec) as sb:
    ex = await sb.exec(["/opt/claude/claude", "--version"])
    async for stream, line in ex: ...
    code = await ex.wait()
await backend.close()
"""

from __future__ import annotations

from bus import InvalidInput, Settings

from ._bwrap import BwrapBackend as BwrapBackend
from ._bwrap import BwrapSandbox as BwrapSandbox
from ._docker import DockerBackend as DockerBackend
from ._docker import DockerSandbox as DockerSandbox
from ._doctor import backend_problem as backend_problem
from ._doctor import doctor_checks as doctor_checks
from ._doctor import image_problem as image_problem
from ._exec import ExecResult as ExecResult
from ._exec import Execution as Execution
from ._image import ImageInfo as ImageInfo
from ._image import build_image as build_image
from ._image import find_rootfs as find_rootfs
from ._image import image_tag as image_tag
from ._labels import life_token as life_token
from ._protocol import Sandbox as Sandbox
from ._protocol import SandboxBackend as SandboxBackend
from ._protocol import SandboxInfo as SandboxInfo
from ._spec import SandboxSpec as SandboxSpec
from ._spec import base_env as base_env
from ._spec import spec_from_policy as spec_from_policy

BACKENDS = ("bwrap", "docker")


def get_backend(name: str, settings: Settings) -> SandboxBackend:
    """The backend called ``name`` (``bwrap`` or ``docker``). Cheap: nothing starts until
    ``create``; a missing tool raises SandboxUnavailable there."""
    if name == "bwrap":
        return BwrapBackend(settings)
    if name == "docker":
        return DockerBackend(settings)
    raise InvalidInput(f"unknown sandbox backend {name!r}; use one of: {', '.join(BACKENDS)}")


__all__ = [
    "BACKENDS",
    "BwrapBackend",
    "BwrapSandbox",
    "DockerBackend",
    "DockerSandbox",
    "ExecResult",
    "Execution",
    "ImageInfo",
    "Sandbox",
    "SandboxBackend",
    "SandboxInfo",
    "SandboxSpec",
    "backend_problem",
    "base_env",
    "build_image",
    "doctor_checks",
    "find_rootfs",
    "get_backend",
    "image_problem",
    "image_tag",
    "life_token",
    "spec_from_policy",
]
