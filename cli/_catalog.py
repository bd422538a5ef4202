"""``taskbus agents | skills``: the catalog of agents and skills operators provide.

Both groups talk to the catalog in JetStream (``TASKBUS_NATS_URL``); ``add`` validates
everything first and stores nothing when any file is refused.
"""

from __future__ import annotations

import asyncio
import getpass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from bus import Bus, BusTimeout, CatalogLimits, Subjects, TaskbusError
from server import add_bundles, open_catalog, read_agents, read_skill, remove_entry

from ._common import ConfigOpt, JsonOpt, fail, load_settings, out, print_json, run

agents_app = typer.Typer(name="agents", help="Claude Code sub-agents operators provide (the catalog).", no_args_is_help=True)
skills_app = typer.Typer(name="skills", help="Claude Code skills operators provide (the catalog).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(agents_app)
    app.add_typer(skills_app)


def _actor() -> str:
    try:
        return f"cli:{getpass.getuser()}"
    except Exception:  # no passwd entry in some containers
        return "cli:unknown"


def _settings(config: str | None) -> Any:
    settings = load_settings(config)
    if not settings.nats_url:
        fail("the catalog lives in NATS JetStream: set TASKBUS_NATS_URL (the URL `taskbus up` prints)")
    return settings


async def _with_bus(settings: Any, action: Any, *, timeout: float = 60.0) -> Any:
    try:
        async with asyncio.timeout(timeout):
            async with await Bus.open(settings.nats_url, Subjects(settings.subject_prefix), name="taskbus-cli") as bus:
                await bus.ensure_streams()
                return await action(bus)
    except TimeoutError:
        raise BusTimeout(f"the catalog in {settings.nats_url} did not answer within {timeout:g}s") from None


def _entry_doc(entry: Any) -> dict[str, Any]:
    return {
        "kind": entry.kind,
        "name": entry.name,
        "sha256": entry.sha256,
        "description": entry.description,
        "files": list(entry.files),
        "size": entry.size,
        "tools": list(entry.tools),
        "model": entry.model,
        "updated_at": entry.updated_at.isoformat(),
        "updated_by": entry.updated_by,
    }


def _add(kind: str, path: Path, json_output: bool, config: str | None) -> None:
    settings = _settings(config)
    limits = CatalogLimits.from_settings(settings)
    try:
        bundles = read_agents(path, limits) if kind == "agent" else [read_skill(path, limits)]
    except TaskbusError as exc:
        fail(f"{exc.describe()}; nothing was stored")
    except OSError as exc:
        fail(f"{path}: {exc.strerror or exc}; nothing was stored")
    changes = run(_with_bus(settings, lambda bus: add_bundles(bus, bundles, limits=limits, actor=_actor())))
    if json_output:
        print_json([{"action": c.action, "previous_sha256": c.previous_sha256, **_entry_doc(c.entry)} for c in changes])
        return
    for c in changes:
        what = f"{kind} {c.entry.name} ({c.entry.sha256[:12]})"
        if c.action == "replaced":
            out.print(f"replaced {what}, was {c.previous_sha256[:12] if c.previous_sha256 else '?'}")
        elif c.action == "unchanged":
            out.print(f"{what} is already in the catalog, unchanged")
        else:
            out.print(f"added {what}")


def _list(kind: str, json_output: bool, config: str | None) -> None:
    settings = _settings(config)

    async def action(bus: Any) -> Any:
        return await (await open_catalog(bus)).entries(kind)

    entries = run(_with_bus(settings, action))
    if json_output:
        print_json([_entry_doc(e) for e in entries])
    elif not entries:
        out.print(f"no {kind}s in the catalog (add one with `taskbus {kind}s add`)")
    else:
        table = Table("name", "sha256", "description", "files", "updated")
        for e in entries:
            table.add_row(e.name, e.sha256[:12], e.description[:80], str(len(e.files)), e.updated_at.strftime("%Y-%m-%d %H:%M"))
        out.print(table)


def _show(kind: str, name: str, json_output: bool, config: str | None) -> None:
    settings = _settings(config)

    async def action(bus: Any) -> Any:
        catalog = await open_catalog(bus)
        entry = await catalog.get(kind, name)
        return entry, await catalog.fetch(entry.ref())

    entry, bundle = run(_with_bus(settings, action))
    main = f"{name}.md" if kind == "agent" else "SKILL.md"
    text = next((f.data for f in bundle.files if f.path == main), b"").decode("utf-8", "replace")
    if json_output:
        print_json({**_entry_doc(entry), "content": text})
        return
    table = Table("field", "value", title=f"{kind} {name}")
    for key, value in _entry_doc(entry).items():
        table.add_row(key, ", ".join(value) if isinstance(value, list) else str(value))
    out.print(table)
    out.print(text, markup=False)


def _rm(kind: str, name: str, json_output: bool, config: str | None) -> None:
    settings = _settings(config)
    entry = run(_with_bus(settings, lambda bus: remove_entry(bus, kind, name, actor=_actor())))
    if json_output:
        print_json({"removed": True, **_entry_doc(entry)})
    else:
        out.print(f"removed {kind} {name} ({entry.sha256[:12]}); running tasks keep the version they started with")


PathArg = Annotated[Path, typer.Argument(help="An agent .md file or a folder of them.")]
SkillArg = Annotated[Path, typer.Argument(help="A skill folder holding SKILL.md and its resources.")]


@agents_app.command("add")
def agents_add(path: PathArg, json_output: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Add (or replace) agents: a Claude Code sub-agent Markdown file, or a folder of them."""
    _add("agent", path, json_output, config)


@agents_app.command("list")
def agents_list(json_output: JsonOpt = False, config: ConfigOpt = None) -> None:
    """The agents in the catalog."""
    _list("agent", json_output, config)


@agents_app.command("show")
def agents_show(name: str, json_output: JsonOpt = False, config: ConfigOpt = None) -> None:
    """One agent: its entry and its file."""
    _show("agent", name, json_output, config)


@agents_app.command("rm")
def agents_rm(name: str, json_output: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Remove an agent: new tasks can no longer choose it."""
    _rm("agent", name, json_output, config)


@skills_app.command("add")
def skills_add(path: SkillArg, json_output: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Add (or replace) a skill: a folder with SKILL.md and its resource files."""
    _add("skill", path, json_output, config)


@skills_app.command("list")
def skills_list(json_output: JsonOpt = False, config: ConfigOpt = None) -> None:
    """The skills in the catalog."""
    _list("skill", json_output, config)


@skills_app.command("show")
def skills_show(name: str, json_output: JsonOpt = False, config: ConfigOpt = None) -> None:
    """One skill: its entry and its SKILL.md."""
    _show("skill", name, json_output, config)


@skills_app.command("rm")
def skills_rm(name: str, json_output: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Remove a skill: new tasks can no longer choose it."""
    _rm("skill", name, json_output, config)
