"""``taskbus profiles | keys | budgets``: operators manage who may do what, and with how much.

Every command connects to the stack's NATS as the ``cli`` user (the control plane lives
in JetStream KV: ``profiles.Store``), makes its change, then publishes the audit notices
of what changed (a notice that cannot be published gets one warning; the change stands).
Without NATS nothing can be read or changed: one error line says how to start it.
"""

from __future__ import annotations

import getpass
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar

import msgspec
import typer
from rich.table import Column, Table

from bus import TaskbusError, parse_duration
from profiles import NoticeBuffer, Store, parse_expiry, profile_from_mapping, profile_to_mapping, publish_notices

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

T = TypeVar("T")

profiles_app = typer.Typer(name="profiles", help="Permission profiles: what keys may do.", no_args_is_help=True)
keys_app = typer.Typer(name="keys", help="API keys: create (shown once), list, revoke, rotate.", no_args_is_help=True)
budgets_app = typer.Typer(name="budgets", help="Spend per key per UTC day and month.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    app.add_typer(profiles_app)
    app.add_typer(keys_app)
    app.add_typer(budgets_app)


def _with_store(config: str | None, action: Callable[[Any], Awaitable[T]]) -> T:
    """Open the store, run ``action(store)``, publish audit notices; errors -> one red line."""
    settings = load_settings(config)
    buffer = NoticeBuffer()

    async def go() -> tuple[T, str | None]:
        async with Store.for_settings(settings, actor=f"cli:{_user()}", notify=buffer) as store:
            result = await action(store)
        return result, await publish_notices(settings, buffer.notices)

    result, warning = run(go())
    if warning:
        err.print(f"[yellow]warning:[/yellow] {warning}", markup=True, highlight=False)
    return result


def _user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no passwd entry in some containers
        return "unknown"


def _split(values: list[str] | None) -> list[str] | None:
    """``--tools Read,Grep --tools Bash`` -> [Read, Grep, Bash]; ``--tools ''`` -> []."""
    if values is None:
        return None
    return [v.strip() for value in values for v in value.split(",") if v.strip()]


def _when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M UTC") if value else "-"


def _usd(value: float | None) -> str:
    return "unlimited" if value is None else f"${value:,.2f}"


# ---------------------------------------------------------------------------- profiles


def _opt(help: str, *names: str) -> Any:
    return typer.Option(*names, help=help, show_default=False)


ListOpt = Annotated[list[str] | None, _opt("Comma-separated or repeated; '' clears.")]
IntOpt = Annotated[int | None, _opt("See docs/profiles.md.")]
FloatOpt = Annotated[float | None, _opt("See docs/profiles.md.")]
DescOpt = Annotated[str | None, _opt("For people.")]
TimeoutOpt = Annotated[int | None, _opt("Max execution seconds.")]
MaxCostOpt = Annotated[float | None, _opt("Max USD per task.")]
DayOpt = Annotated[float | None, _opt("Budget USD per UTC day.")]
MonthOpt = Annotated[float | None, _opt("Budget USD per UTC month.")]
NetworkOpt = Annotated[str | None, _opt("none or model-api.")]
FsOpt = Annotated[str | None, _opt("none, readonly or readwrite.")]
RootsOpt = Annotated[list[str] | None, _opt("Allowed project root (repeat; replaces the list).", "--root")]
RateOpt = Annotated[int | None, _opt("Requests per minute per key.")]
CacheOpt = Annotated[bool | None, _opt("Opt in to the completion cache.", "--cache/--no-cache")]


_RENAMED = {
    "roots": "project_roots",
    "timeout": "timeout_s",
    "max_cost": "max_cost_per_task_usd",
    "day": "budget_day_usd",
    "month": "budget_month_usd",
    "fs": "fs_access",
    "rate_limit": "rate_limit_per_min",
    "cache": "cache_completions",
}
_NOT_FIELDS = frozenset({"name", "copy_from", "json_output", "config"})


def _profile_fields(options: dict[str, Any]) -> dict[str, Any]:
    """The profile fields a command's options set (its ``locals()``; None = not given)."""
    return {
        _RENAMED.get(option, option): _split(value) if isinstance(value, list) else value
        for option, value in options.items()
        if option not in _NOT_FIELDS and value is not None
    }


def _profile_table(profiles: list[Any]) -> Table:
    table = Table(Column("name", no_wrap=True), "kinds", "tools", "conc.", "max/task", "day", "month", "fs", "rate/min")
    for p in profiles:
        table.add_row(
            p.name,
            ",".join(p.kinds),
            f"{len(p.tools)}" if "*" not in p.tools else "*",
            str(p.max_concurrent),
            _usd(p.max_cost_per_task_usd),
            _usd(p.budget_day_usd),
            _usd(p.budget_month_usd),
            p.fs_access,
            str(p.rate_limit_per_min),
        )
    return table


def _show_profile(profile: Any) -> None:
    table = Table("field", "value", title=f"profile {profile.name}")
    for field, value in msgspec.to_builtins(profile).items():
        table.add_row(field, ", ".join(value) if isinstance(value, list) else ("(settings default)" if value is None else str(value)))
    out.print(table)


@profiles_app.command("list")
def profiles_list(json_output: JsonOpt = False, config: ConfigOpt = None) -> None:
    """All profiles."""
    profiles = _with_store(config, lambda s: s.list_profiles())
    if json_output:
        print_json(profiles)
    else:
        out.print(_profile_table(profiles))


@profiles_app.command("show")
def profiles_show(name: str, json_output: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Every field of one profile."""
    profile = _with_store(config, lambda s: s.get_profile(name))
    if json_output:
        print_json(profile)
    else:
        _show_profile(profile)


@profiles_app.command("create")
def profiles_create(
    name: str,
    copy_from: Annotated[str | None, _opt("Start from this profile's values.", "--from")] = None,
    description: DescOpt = None,
    kinds: ListOpt = None,
    tools: ListOpt = None,
    agents: ListOpt = None,
    skills: ListOpt = None,
    models: ListOpt = None,
    max_concurrent: IntOpt = None,
    cpus: FloatOpt = None,
    memory_mb: IntOpt = None,
    pids: IntOpt = None,
    disk_mb: IntOpt = None,
    timeout: TimeoutOpt = None,
    max_turns: IntOpt = None,
    max_cost: MaxCostOpt = None,
    day: DayOpt = None,
    month: MonthOpt = None,
    network: NetworkOpt = None,
    fs: FsOpt = None,
    roots: RootsOpt = None,
    rate_limit: RateOpt = None,
    cache: CacheOpt = None,
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Create a profile (unset fields take defaults; see docs/profiles.md)."""
    fields = _profile_fields(locals())  # first statement: locals() are just the options here

    async def action(store: Any) -> Any:
        base = profile_to_mapping(await store.get_profile(copy_from)) if copy_from else {}
        return await store.create_profile(profile_from_mapping(name, {**base, **fields}))

    profile = _with_store(config, action)
    if json_output:
        print_json(profile)
    else:
        out.print(f"created profile [bold]{profile.name}[/bold]")


@profiles_app.command("update")
def profiles_update(
    name: str,
    description: DescOpt = None,
    kinds: ListOpt = None,
    tools: ListOpt = None,
    agents: ListOpt = None,
    skills: ListOpt = None,
    models: ListOpt = None,
    max_concurrent: IntOpt = None,
    cpus: FloatOpt = None,
    memory_mb: IntOpt = None,
    pids: IntOpt = None,
    disk_mb: IntOpt = None,
    timeout: TimeoutOpt = None,
    max_turns: IntOpt = None,
    max_cost: MaxCostOpt = None,
    day: DayOpt = None,
    month: MonthOpt = None,
    network: NetworkOpt = None,
    fs: FsOpt = None,
    roots: RootsOpt = None,
    rate_limit: RateOpt = None,
    cache: CacheOpt = None,
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Change some fields of a profile (lists are replaced, not merged)."""
    fields = _profile_fields(locals())
    if not fields:
        fail("nothing to change: give at least one option (see `taskbus profiles update --help`)")
    profile = _with_store(config, lambda s: s.update_profile(name, **fields))
    if json_output:
        print_json(profile)
    else:
        out.print(f"updated profile [bold]{name}[/bold]: {', '.join(sorted(fields))}")


@profiles_app.command("delete")
def profiles_delete(name: str, json_output: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Delete a profile no working key uses."""
    _with_store(config, lambda s: s.delete_profile(name))
    if json_output:
        print_json({"deleted": name})
    else:
        out.print(f"deleted profile [bold]{name}[/bold]")


@profiles_app.command("apply")
def profiles_apply(
    file: Annotated[Path, typer.Option("-f", "--file", help="TOML file of [profiles.<name>] tables.")],
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Create or update the profiles in FILE, all or nothing (idempotent; keep it in git)."""
    try:
        text = file.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read {file}: {exc.strerror if isinstance(exc, OSError) else exc}")
    result = _with_store(config, lambda s: s.apply_toml(text))
    if json_output:
        print_json(result)
        return
    for name in result.created:
        out.print(f"created [bold]{name}[/bold]")
    for name, fields in result.updated.items():
        out.print(f"updated [bold]{name}[/bold]: {', '.join(fields)}")
    if not result.changed:
        out.print(f"no changes ({len(result.unchanged)} profile(s) already as in {file})")


# ---------------------------------------------------------------------------- keys


def _key_doc(record: Any, now: datetime, plaintext: str | None = None) -> dict[str, Any]:
    doc = msgspec.to_builtins(record)
    doc["state"] = record.state(now)
    if plaintext is not None:
        doc = {"key": plaintext, **doc}
    return doc


def _show_new_key(plaintext: str, record: Any, extra: str = "") -> None:
    out.print(f"[bold green]{plaintext}[/bold green]")
    err.print(
        f"key {record.prefix} for profile {record.profile}{extra}. This is the only time the key is shown: "
        "store it now (e.g. TASKBUS_API_KEY).",
        highlight=False,
    )


@keys_app.command("create")
def keys_create(
    profile: Annotated[str, typer.Option("--profile", help="Profile the key gets.")],
    name: Annotated[str | None, typer.Option(help="A label for people.", show_default=False)] = None,
    expires: Annotated[str | None, typer.Option(help="30d, 12h, ... or an ISO date (UTC).", show_default=False)] = None,
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Create a key. It is printed once and stored only as a hash."""
    now = datetime.now(UTC)
    try:
        expires_at = parse_expiry(expires, now) if expires else None
    except TaskbusError as exc:
        fail(exc.describe())
    plaintext, record = _with_store(config, lambda s: s.create_key(profile, name=name, expires_at=expires_at))
    if json_output:
        print_json(_key_doc(record, now, plaintext))
    else:
        _show_new_key(plaintext, record, f", expires {_when(record.expires_at)}" if record.expires_at else "")


@keys_app.command("list")
def keys_list(
    profile: Annotated[str | None, typer.Option(help="Only keys of this profile.", show_default=False)] = None,
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """All keys (prefixes only; keys themselves are never stored)."""
    records = _with_store(config, lambda s: s.list_keys(profile=profile))
    now = datetime.now(UTC)
    if json_output:
        print_json([_key_doc(r, now) for r in records])
        return
    table = Table(Column("prefix", no_wrap=True), "name", "profile", "state", "created", "expires", "replaced by")
    for r in records:
        table.add_row(
            r.prefix,
            r.name or "-",
            r.profile,
            r.state(now),
            _when(r.created_at),
            _when(r.grace_until or r.expires_at),
            r.replaced_by or "-",
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(prefix: str, json_output: JsonOpt = False, config: ConfigOpt = None) -> None:
    """Revoke a key now (its running tasks finish; new requests are refused)."""
    record = _with_store(config, lambda s: s.revoke(prefix))
    now = datetime.now(UTC)
    if json_output:
        print_json(_key_doc(record, now))
    else:
        out.print(f"revoked {record.prefix}")


@keys_app.command("rotate")
def keys_rotate(
    prefix: str,
    grace: Annotated[str, typer.Option(help="How long the old key keeps working (0s, 15m, 1h, 7d).")] = "1h",
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Replace a key: a new key (shown once); the old one works for the grace period."""
    try:
        grace_s = parse_duration(grace)
    except TaskbusError as exc:
        fail(exc.describe())
    plaintext, record = _with_store(config, lambda s: s.rotate(prefix, grace_s))
    now = datetime.now(UTC)
    if json_output:
        print_json({**_key_doc(record, now, plaintext), "replaces": prefix, "grace_s": grace_s})
    else:
        _show_new_key(plaintext, record, f", replacing {prefix} (which works for {grace} more)")


# ---------------------------------------------------------------------------- budgets


@budgets_app.command("show")
def budgets_show(
    key: Annotated[str | None, typer.Option("--key", help="One key's prefix; default: every working key.", show_default=False)] = None,
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Budget, spend and remaining money in the current UTC day and month."""

    async def action(store: Any) -> list[Any]:
        if key is not None:
            return [await store.remaining_budget(key)]
        now = store.now()
        return [await store.remaining_budget(r.prefix) for r in await store.list_keys() if r.state(now) in ("active", "rotated")]

    rows = _with_store(config, action)
    if json_output:
        print_json(rows[0] if key is not None else rows)
        return
    table = Table(Column("key", no_wrap=True), "profile", "day used", "day budget", "month used", "month budget", "remaining", "running")
    for s in rows:
        table.add_row(
            s.key_id + (" *" if s.override else ""),
            s.profile,
            f"${s.day.used_usd:,.4f}",
            _usd(s.day.limit_usd),
            f"${s.month.used_usd:,.4f}",
            _usd(s.month.limit_usd),
            _usd(s.remaining_usd),
            f"{s.running}/{s.max_concurrent}",
        )
    out.print(table)
    if any(s.override for s in rows):
        out.print("* the key has its own budget (`taskbus budgets set --key`)")


@budgets_app.command("set")
def budgets_set(
    profile: Annotated[str | None, typer.Option("--profile", help="Set the profile's budget.", show_default=False)] = None,
    key: Annotated[str | None, typer.Option("--key", help="Set one key's own budget (kept across rotation).", show_default=False)] = None,
    day: Annotated[float | None, typer.Option(help="USD per UTC day.", show_default=False)] = None,
    month: Annotated[float | None, typer.Option(help="USD per UTC month.", show_default=False)] = None,
    json_output: JsonOpt = False,
    config: ConfigOpt = None,
) -> None:
    """Set a daily and/or monthly budget for a profile or a key."""
    if (profile is None) == (key is None):
        fail("give exactly one of --profile P or --key PREFIX")
    if day is None and month is None:
        fail("nothing to set: give --day USD and/or --month USD")
    for label, value in (("--day", day), ("--month", month)):
        if value is not None and value < 0:
            fail(f"{label} must be zero or more USD (got {value})")

    async def action(store: Any) -> Any:
        await store.set_budget(profile=profile, key_id=key, day_usd=day, month_usd=month)
        return await store.get_profile(profile) if profile else await store.remaining_budget(key)

    result = _with_store(config, action)
    if json_output:
        print_json(result)
    else:
        out.print(f"budget of {'profile ' + profile if profile else 'key ' + str(key)} set")
