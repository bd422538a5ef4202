"""``taskbus tasks artifacts TASK_ID``: download the files a task produced."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn

from bus import Bus
from server import download, list_artifacts

from ._common import ConfigOpt, JsonOpt, err, load_settings, out, print_json, run

PROGRESS_FROM_BYTES = 1024 * 1024
"""Show a progress bar when the files together are at least this large."""


def register(tasks_app: typer.Typer) -> None:
    tasks_app.command("artifacts")(tasks_artifacts)


def tasks_artifacts(
    task_id: Annotated[str, typer.Argument(help="Task id (t_...).")],
    out_dir: Annotated[Path, typer.Option("--out", help="Folder to save them in (created if missing).")] = Path("."),
    force: Annotated[bool, typer.Option("--force", help="Replace files that already exist there.")] = False,
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Download a task's artifacts from the Object Store, under their paths in the workspace."""
    settings = load_settings(config)
    saved = run(_download(settings, task_id, out_dir, force=force, show=not json_output))
    if json_output:
        print_json({"task_id": task_id, "out": str(out_dir), "artifacts": saved})
    elif not saved:
        out.print(f"task {task_id} has no artifacts")
    else:
        for item in saved:
            out.print(f"{item.saved_to} ({item.size} bytes)", markup=False, highlight=False)


async def _download(settings: Any, task_id: str, out_dir: Path, *, force: bool, show: bool) -> list[Any]:
    async with await Bus.for_settings(settings, name="taskbus-cli") as bus:
        total = sum(item.size for item in await list_artifacts(bus, task_id))
        if not show or total < PROGRESS_FROM_BYTES:
            return await download(bus, task_id, out_dir, force=force)
        with Progress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(), console=err) as bar:
            overall = bar.add_task(f"{task_id} artifacts", total=total)
            done: dict[str, int] = {}

            def advance(path: str, written: int, _size: int) -> None:
                done[path] = written
                bar.update(overall, completed=sum(done.values()))

            return await download(bus, task_id, out_dir, force=force, progress=advance)
