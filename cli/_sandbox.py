"""``taskbus sandbox``: build the image, try a sandbox by hand, list and prune sandboxes."""

from __future__ import annotations

import shutil
import sys
import tempfile
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from bus import Settings, TaskbusError

from ._common import (
    ConfigOpt,
    JsonOpt,
    err,
    fail,
    load_settings,
    out,
    print_json,
    run,
)

if TYPE_CHECKING:
    from sandbox import SandboxInfo

# `sandbox` is imported inside the commands that use it: the rest of the CLI (and the
# server process it shares modules with) never loads the sandbox package (+0.2 s start-up).

BackendOpt = Annotated[str, typer.Option("--backend", "-b", help="bwrap or docker (default: TASKBUS_SANDBOX_BACKEND).")]


def register(app: typer.Typer) -> None:
    group = typer.Typer(name="sandbox", help="Sandbox image and backends (bwrap, docker).", no_args_is_help=True)
    app.add_typer(group)

    @group.command("build-image")
    def build_image(
        force: Annotated[bool, typer.Option("--force", help="Rebuild even when the cached image matches.")] = False,
        no_docker: Annotated[bool, typer.Option("--no-docker", help="Only the root filesystem (for bwrap).")] = False,
        json_output: JsonOpt = False,
        config: ConfigOpt = None,
    ) -> None:
        """Build the Debian root filesystem (mmdebstrap) and load it into Docker; cached."""
        from sandbox import build_image as build  # noqa: PLC0415 (lazy, see the top)

        settings = load_settings(config)
        try:
            if json_output:
                info = build(settings, force=force, docker=not no_docker, progress=err.print)
            else:
                with out.status("building sandbox image") as status:

                    def progress(message: str) -> None:
                        status.update(message)
                        out.print(f"  {message}")

                    info = build(settings, force=force, docker=not no_docker, progress=progress)
        except TaskbusError as exc:
            fail(exc.describe())
        if json_output:
            print_json(info)
            return
        what = "built" if info.built else "cached"
        out.print(f"sandbox image {info.tag} ({what}, {info.seconds:.1f} s); root filesystem {info.rootfs}")
        if not info.docker_loaded and not no_docker:
            out.print("[yellow]Docker not reachable: only bwrap can use it until you rerun this with dockerd up[/yellow]")

    @group.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def run_cmd(
        ctx: typer.Context,
        backend: BackendOpt = "",
        memory: Annotated[int, typer.Option("--memory", help="Memory limit in MB.")] = 0,
        cpus: Annotated[float, typer.Option("--cpus", help="CPU limit.")] = 0.0,
        pids: Annotated[int, typer.Option("--pids", help="Process limit.")] = 0,
        disk: Annotated[int, typer.Option("--disk", help="tmpfs size and largest file, MB.")] = 0,
        timeout: Annotated[int, typer.Option("--timeout", help="Wall clock, seconds.")] = 0,
        workspace: Annotated[str, typer.Option("--workspace", help="Host folder for /workspace (default: a temporary one).")] = "",
        config: ConfigOpt = None,
    ) -> None:
        """Run a command in a fresh sandbox and stream its output: taskbus sandbox run -- CMD..."""
        argv = list(ctx.args)
        if not argv:
            fail("give the command after --, e.g. `taskbus sandbox run -- bash -c 'id'`", code=2)
        settings = load_settings(config)
        name = backend or settings.sandbox_backend
        if name not in ("bwrap", "docker"):
            fail(f"--backend must be bwrap or docker, not {name!r}", code=2)
        code = run(
            _run(
                settings,
                name,
                argv,
                workspace=workspace,
                memory=memory or settings.default_memory_mb,
                cpus=cpus or settings.default_cpus,
                pids=pids or settings.default_pids,
                disk=disk or settings.default_disk_mb,
                timeout=timeout or settings.default_timeout_s,
            )
        )
        raise typer.Exit(code)

    @group.command("ls")
    def ls(json_output: JsonOpt = False, config: ConfigOpt = None) -> None:
        """List the sandboxes taskbus made on this machine (both backends)."""
        settings = load_settings(config)
        infos, notes = run(_list(settings))
        if json_output:
            print_json({"sandboxes": infos, "notes": notes})
            return
        table = Table(title="sandboxes")
        for column in ("id", "backend", "state", "task", "runner", "detail"):
            table.add_column(column)
        for i in infos:
            table.add_row(i.id, i.backend, i.state, i.task_id, i.runner_id, i.detail)
        out.print(table)
        for note in notes:
            out.print(f"[yellow]{note}[/yellow]")

    @group.command("prune")
    def prune(
        everything: Annotated[bool, typer.Option("--all", help="Also kill running sandboxes (stop runners first).")] = False,
        json_output: JsonOpt = False,
        config: ConfigOpt = None,
    ) -> None:
        """Remove leftover sandboxes (stale bwrap, stopped containers); --all removes every one."""
        settings = load_settings(config)
        counts = run(_prune(settings, everything))
        if json_output:
            print_json(counts)
        else:
            out.print(", ".join(f"{k}: removed {v}" for k, v in counts.items()))


async def _run(
    settings: Settings, name: str, argv: list[str], *, workspace: str, memory: int, cpus: float, pids: int, disk: int, timeout: int
) -> int:
    from sandbox import SandboxSpec, get_backend  # noqa: PLC0415 (lazy, see the top)

    folder = workspace or tempfile.mkdtemp(prefix="taskbus-ws-")
    spec = SandboxSpec(
        task_id="manual", runner_id="cli", workspace=folder, cpus=cpus, memory_mb=memory, pids=pids, disk_mb=disk, timeout_s=timeout
    )
    backend = get_backend(name, settings)
    try:
        async with await backend.create(spec) as sb:
            err.print(f"sandbox {sb.id} ({name}); workspace {sb.workspace}")
            ex = await sb.exec(argv)
            async for stream, line in ex:
                target = sys.stdout if stream == "stdout" else sys.stderr
                target.write(line + "\n")
                target.flush()
            code = await ex.wait()
            if sb.timed_out:
                err.print(f"[red]killed: wall clock of {timeout} s[/red]")
            elif getattr(sb, "oom_killed", False):
                err.print(f"[red]killed: memory limit of {memory} MB[/red]")
            return code if code >= 0 else 128 - code
    finally:
        await backend.close()
        if not workspace:
            shutil.rmtree(folder, ignore_errors=True)


async def _list(settings: Settings) -> tuple[list[SandboxInfo], list[str]]:
    from sandbox import get_backend  # noqa: PLC0415 (lazy, see the top)

    infos: list[SandboxInfo] = []
    notes: list[str] = []
    for name in ("bwrap", "docker"):
        backend = get_backend(name, settings)
        try:
            infos.extend(await backend.list())
        except TaskbusError as exc:
            notes.append(f"{name}: {exc.describe()}")
        finally:
            await backend.close()
    return infos, notes


async def _prune(settings: Settings, everything: bool) -> dict[str, int]:
    from sandbox import get_backend  # noqa: PLC0415 (lazy, see the top)

    counts: dict[str, int] = {}
    for name in ("bwrap", "docker"):
        backend = get_backend(name, settings)
        try:
            counts[name] = await backend.prune(everything=everything)
        except TaskbusError:
            counts[name] = 0
        finally:
            await backend.close()
    return counts
