"""Before ``taskbus up`` starts its runner: can that runner run a task here?

``ensure_sandbox`` checks what the runner's own self-check checks (Claude Code, bwrap, the
sandbox image in the per-machine cache). A missing image is built (or adopted from an
older version's data dir) with progress, unless ``up_build_image`` is off; anything else
stops ``taskbus up`` with the command that fixes it.
"""

from __future__ import annotations

import logging

import msgspec
from rich.console import Console

from bus import Settings, TaskbusError

from ._supervisor import UpError

logger = logging.getLogger(__name__)


def ensure_sandbox(settings: Settings, backend: str, console: Console | None) -> None:
    """Blocking (mmdebstrap takes about 35 s); raises UpError saying what to run."""
    from sandbox import backend_problem, build_image, image_problem  # noqa: PLC0415 (adds ~190 ms to every CLI start; only `up` needs it)

    settings = msgspec.structs.replace(settings, sandbox_backend=backend)
    problem = backend_problem(settings, backend)
    if not problem:
        return
    if not image_problem(settings, backend):  # not the image: Claude Code or bwrap is missing
        raise UpError(f"the {backend} runner could not run a task: {problem}")
    if not settings.up_build_image:
        raise UpError(
            f"the {backend} runner could not run a task: {problem} (TASKBUS_UP_BUILD_IMAGE is off, so `taskbus up` did not build it)"
        )
    logger.info("building the sandbox image for the %s runner: %s", backend, problem)
    try:
        if console is None:
            build_image(settings, docker=backend == "docker", progress=lambda m: logger.info("sandbox image: %s", m))
        else:
            with console.status("building the sandbox image (first start on this machine)") as status:

                def say(message: str) -> None:
                    status.update(f"sandbox image: {message}")
                    console.print(f"  sandbox image: {message}", highlight=False, markup=False)

                build_image(settings, docker=backend == "docker", progress=say)
    except TaskbusError as exc:
        raise UpError(
            f"building the sandbox image failed: {exc.describe()}; fix that, then run "
            "`taskbus sandbox build-image` and start `taskbus up` again"
        ) from None
    problem = backend_problem(settings, backend)
    if problem:
        raise UpError(f"the {backend} runner still could not run a task after building the image: {problem}")
