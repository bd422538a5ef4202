"""``taskbus runner``: the sandbox runner process."""

from __future__ import annotations

import asyncio
import signal
from typing import Annotated

import typer

from bus import Settings

from ._common import ConfigOpt, err, load_settings, run


def register(app: typer.Typer) -> None:
    @app.command("runner")
    def runner_command(
        slots: Annotated[int | None, typer.Option("--slots", min=1, help="Tasks run at once (TASKBUS_RUNNER_SLOTS).")] = None,
        backend: Annotated[str | None, typer.Option("--backend", help="bwrap or docker (TASKBUS_SANDBOX_BACKEND).")] = None,
        runner_id: Annotated[
            str | None, typer.Option("--id", help="Runner id (default: <host>-<backend>); keep it stable across restarts.")
        ] = None,
        kinds: Annotated[str, typer.Option("--kinds", help="Job kinds to take: task,complete.")] = "task,complete",
        grace: Annotated[float, typer.Option("--grace", help="Seconds running tasks get to finish after SIGTERM.")] = 30.0,
        config: ConfigOpt = None,
    ) -> None:
        """Pull jobs from the bus and run them in sandboxes (SIGTERM: drain, then cancel)."""
        if backend not in (None, "bwrap", "docker"):
            raise typer.BadParameter("--backend must be bwrap or docker")
        wanted = tuple(k.strip() for k in kinds.split(",") if k.strip())
        if not wanted or any(k not in ("task", "complete") for k in wanted):
            raise typer.BadParameter("--kinds takes task and/or complete")
        settings = load_settings(config, nats_role="runner")
        run(_serve(settings, slots=slots, backend=backend, runner_id=runner_id, kinds=wanted, grace=grace))


async def _serve(
    settings: Settings, *, slots: int | None, backend: str | None, runner_id: str | None, kinds: tuple[str, ...], grace: float
) -> None:
    from sandbox import Runner  # noqa: PLC0415 (the CLI loads sandbox only for the commands that use it: start-up cost)

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with Runner(settings, backend=backend, slots=slots, runner_id=runner_id, kinds=kinds) as runner:
        if runner.problem:
            err.print(f"[yellow]runner {runner.id} started but cannot run sandboxed jobs yet: {runner.problem}[/yellow]")
        else:
            err.print(f"runner {runner.id} ready ({runner.backend_name}, {runner.slots} slots); SIGTERM drains and stops")
        await stop.wait()
        err.print(f"runner {runner.id} stopping (up to {grace:.0f}s for running tasks)")
        await runner.shutdown(grace_s=grace)
