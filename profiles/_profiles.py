"""Permission profiles: what a key may do, and how much of it.

A Profile is internal to ``profiles`` (stored as JSON in SQLite, never sent on the
bus); what crosses the bus is the ``bus.Policy`` resolved from it for one task.

Lists of tools, agents, skills and models hold exact names. ``*`` grants everything
of that kind and is only ever there because an operator wrote it; policy resolution
turns it into the concrete tools and models of this installation. Tool entries are
tools the installed Claude Code offers (or their old names, ``Task``), Claude Code
permission rules of one (``Bash(git diff:*)``), or MCP names with a trailing wildcard
(``mcp__github__*``).
"""

from __future__ import annotations

import re
import tomllib
from importlib import resources
from typing import Annotated, Any, Literal

import msgspec

from bus import CLAUDE_CODE_TOOLS, CLAUDE_CODE_VERSION, TOOL_ALIASES, InvalidInput, parse_grant, tool_exists

NonNegative = Annotated[float, msgspec.Meta(ge=0, le=1e9)]
PositiveInt = Annotated[int, msgspec.Meta(gt=0, le=1_000_000_000)]
PositiveFloat = Annotated[float, msgspec.Meta(gt=0, le=4096)]
ProfileName = Annotated[str, msgspec.Meta(pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")]
PROFILE_NAME_RULE = "1-64 characters: lowercase letters, digits, '-' and '_', starting with a letter or digit"

# Claude Code's built-in tools: the pinned list of the installed release
# (``bus.CLAUDE_CODE_TOOLS``) and the old names it still accepts (``Task`` for ``Agent``).
# MCP tools are ``mcp__<server>__<tool>``.
KNOWN_TOOLS: frozenset[str] = frozenset(CLAUDE_CODE_TOOLS) | frozenset(TOOL_ALIASES)
_MCP = re.compile(r"^mcp__[A-Za-z0-9_-]+(__[A-Za-z0-9_*-]+)?\*?$|^mcp__\*$")
_EXACT = re.compile(r"^[A-Za-z0-9_.:-]{1,128}$")

Kind = Literal["complete", "task"]


class Profile(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """One named permission profile. Resource fields left ``None`` use the Settings default."""

    name: ProfileName
    description: str = ""
    kinds: list[Kind] = msgspec.field(default_factory=lambda: ["complete", "task"])
    """Which MCP tools / job kinds the profile may use at all."""
    tools: list[str] = []
    agents: list[str] = []
    skills: list[str] = []
    models: list[str] = []
    max_concurrent: PositiveInt = 2
    cpus: PositiveFloat | None = None
    memory_mb: PositiveInt | None = None
    pids: PositiveInt | None = None
    disk_mb: PositiveInt | None = None
    timeout_s: PositiveInt | None = None
    max_turns: PositiveInt = 50
    max_cost_per_task_usd: NonNegative = 1.0
    budget_day_usd: NonNegative | None = None
    """None: no daily budget."""
    budget_month_usd: NonNegative | None = None
    network: Literal["none", "model-api"] = "model-api"
    fs_access: Literal["none", "readonly", "readwrite"] = "none"
    project_roots: list[str] = []
    rate_limit_per_min: PositiveInt = 60
    cache_completions: bool = False
    console: bool = False
    """Keys of this profile may log in to the web console (/console): see and cancel every task."""


PROFILE_FIELDS: tuple[str, ...] = tuple(f for f in Profile.__struct_fields__ if f != "name")


def check_tool_name(name: str) -> None:
    """Raise InvalidInput unless ``name`` is a tool the installed Claude Code offers (or
    its old name), a rule of one (``Bash(ls:*)``), an MCP name or ``*``; the message lists
    the real tools."""
    if name == "*" or _MCP.match(name):
        return
    try:
        tool = parse_grant(name).tool
    except ValueError:
        tool = ""
    if tool and tool_exists(tool):
        return
    aliases = ", ".join(f"{old} (= {new})" for old, new in TOOL_ALIASES.items())
    raise InvalidInput(
        f"unknown tool {name!r}: Claude Code {CLAUDE_CODE_VERSION} offers {', '.join(CLAUDE_CODE_TOOLS)} "
        f"(old names accepted: {aliases}); also 'Tool(rule)' like 'Bash(ls:*)', "
        "'mcp__<server>__<tool>' (a trailing '*' allowed), or '*' for all",
        field="tools",
        value=name,
    )


def _check_names(profile: str, field: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise InvalidInput(f"profile {profile!r}: {field} lists {name!r} twice", field=field)
        seen.add(name)
        if field == "tools":
            try:
                check_tool_name(name)
            except InvalidInput as exc:
                raise InvalidInput(f"profile {profile!r}: {exc.message}", field=field, value=name) from None
        elif name != "*" and not _EXACT.match(name):
            raise InvalidInput(
                f"profile {profile!r}: {field[:-1]} name {name!r} is not valid (letters, digits, '.', ':', '-' and '_'; or '*' for all)",
                field=field,
                value=name,
            )


def validate(profile: Profile) -> Profile:
    """Checks msgspec cannot express: known tool names, sane roots, distinct kinds."""
    for field in ("tools", "agents", "skills", "models"):
        _check_names(profile.name, field, getattr(profile, field))
    if not profile.kinds:
        raise InvalidInput(f"profile {profile.name!r}: kinds is empty; give 'complete' and/or 'task'")
    for root in profile.project_roots:
        if not root.startswith("/"):
            raise InvalidInput(f"profile {profile.name!r}: project root {root!r} is not an absolute path", field="project_roots")
    if profile.project_roots and profile.fs_access == "none":
        raise InvalidInput(
            f"profile {profile.name!r}: project_roots given but fs_access is 'none'; "
            "set fs_access to 'readonly' or 'readwrite', or drop the roots",
            field="fs_access",
        )
    return profile


def _problem(exc: msgspec.ValidationError) -> str:
    text = str(exc)
    if " - at `$." in text:
        message, _, where = text.partition(" - at `$.")
        return f"{where.rstrip('`')}: {message}"
    return text


def profile_from_mapping(name: str, data: dict[str, Any]) -> Profile:
    """Build and validate a Profile from TOML/CLI values; InvalidInput names the bad field."""
    if not isinstance(data, dict):
        raise InvalidInput(f"profile {name!r}: expected a table of settings, got {type(data).__name__}")
    if "name" in data and data["name"] != name:
        raise InvalidInput(f"profile {name!r}: 'name' inside the table says {data['name']!r}")
    if not re.match(r"^[a-z0-9][a-z0-9_-]{0,63}$", name or ""):
        raise InvalidInput(f"profile name {name!r} is not valid: {PROFILE_NAME_RULE}", field="name")
    try:
        profile = msgspec.convert({**data, "name": name}, Profile, strict=True)
    except msgspec.ValidationError as exc:
        problem = _problem(exc)
        if problem.startswith("Object contains unknown field"):
            problem += f"; known fields: {', '.join(PROFILE_FIELDS)}"
        raise InvalidInput(f"profile {name!r}: {problem}") from None
    return validate(profile)


def profile_to_mapping(profile: Profile) -> dict[str, Any]:
    """All fields but the name, with None values dropped (TOML has no null)."""
    raw = msgspec.to_builtins(profile)
    raw.pop("name")
    return {k: v for k, v in raw.items() if v is not None}


def parse_profiles_toml(text: str) -> dict[str, Profile]:
    """``[profiles.<name>]`` tables (or top-level tables) to validated Profiles."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"not valid TOML: {exc}") from None
    tables = data.get("profiles", data)
    if not isinstance(tables, dict) or not tables:
        raise InvalidInput("no profiles found: write one [profiles.<name>] table per profile")
    return {name: profile_from_mapping(name, body) for name, body in tables.items()}


def default_profiles() -> dict[str, Profile]:
    """The named defaults shipped in ``default_profiles.toml``."""
    text = resources.files(__package__).joinpath("default_profiles.toml").read_text()
    return parse_profiles_toml(text)


def encode_profile(profile: Profile) -> str:
    return msgspec.json.encode(profile, order="sorted").decode()


def decode_profile(data: str | bytes) -> Profile:
    """A stored profile. Tool names the installed Claude Code no longer offers
    (``MultiEdit``, ``TodoWrite`` in a profile seeded before 2.1) are dropped: they grant
    nothing, and keeping them would make every later update of the profile invalid."""
    profile = msgspec.json.decode(data, type=Profile)
    kept = [t for t in profile.tools if _offered(t)]
    return profile if kept == profile.tools else msgspec.structs.replace(profile, tools=kept)


def _offered(name: str) -> bool:
    try:
        check_tool_name(name)
    except InvalidInput:
        return False
    return True
