"""The agents and skills catalog: what operators add, policies choose and runners install.

Kept in JetStream so every runner on every host reads the same version and none needs a
database: the KV bucket ``<prefix>-catalog`` maps ``agent.<name>`` / ``skill.<name>`` to
the current ``CatalogEntry``; the Object Store bucket of the same name holds each
``CatalogBundle`` under its content hash (hex SHA-256 of its msgpack encoding). A removed
entry leaves its bundle in place, so a task admitted before the removal still installs
the version its Policy pins.

This module is the part server and runners share: the bundle format, its validation
(name, paths, sizes, frontmatter) and reading/writing the buckets. Reading files from an
operator's disk is the CLI's job (``server/_catalog_files.py``).
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

import msgspec
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StorageType
from nats.js.errors import KeyNotFoundError, NoKeysError, NotFoundError

from ._errors import BusError, InvalidInput, NotFound
from ._messages import CatalogBundle, CatalogEntry, CatalogFile, CatalogKind, CatalogRef, utcnow
from ._settings import Settings
from ._streams import ensure_kv, ensure_object_store

if TYPE_CHECKING:
    from nats.js import JetStreamContext

logger = logging.getLogger(__name__)

CATALOG_KINDS: tuple[CatalogKind, ...] = ("agent", "skill")
NAME_PATTERN = r"^[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?$"
_NAME = re.compile(NAME_PATTERN)
BUILTIN_AGENTS: tuple[str, ...] = ("general-purpose", "Explore", "Plan")
"""Claude Code's own sub-agents a policy may select by name (checked with the CLI 2.1.197:
its init event also lists ``claude`` and ``statusline-setup``, which taskbus never offers)."""
RESERVED_NAMES = frozenset({"claude", "general-purpose", "explore", "plan", "statusline-setup", "output-style-setup"})
AGENT_KEYS = frozenset({"name", "description", "tools", "model", "color"})
SKILL_KEYS = frozenset({"name", "description", "license"})
SKILL_FILE = "SKILL.md"
_KEY = re.compile(r"^([A-Za-z][A-Za-z0-9_-]*):(?:\s+(.*))?$")
_TOOL = re.compile(r"^[A-Za-z][A-Za-z0-9_]*(\([^()]*\))?$|^mcp__[A-Za-z0-9_-]+$")
_MODEL = re.compile(r"^[a-z0-9][a-z0-9.-]{0,63}$")


@dataclass(frozen=True)
class CatalogLimits:
    max_file_bytes: int = 262_144
    max_entry_bytes: int = 2_097_152
    max_files: int = 64

    @classmethod
    def from_settings(cls, settings: Settings) -> CatalogLimits:
        return cls(settings.catalog_max_file_bytes, settings.catalog_max_entry_bytes, settings.catalog_max_files)


def check_name(kind: str, name: str) -> str:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidInput(
            f"{kind} name {str(name)[:80]!r} is not allowed: use 1-64 lowercase letters, digits and '-' (not starting or ending with '-')",
            field="name",
        )
    if name in RESERVED_NAMES:
        raise InvalidInput(f"{kind} name {name!r} is reserved by Claude Code: choose another name", field="name")
    return name


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def parse_frontmatter(text: str, *, where: str) -> tuple[dict[str, str], str]:
    """The ``---``-delimited header of a Markdown file as simple ``key: value`` pairs, and
    the body. Only one-line scalar values are accepted (quoted or not); nested YAML,
    block scalars, duplicate keys and anything else are refused with InvalidInput."""
    lines = text.split("\n")
    if not lines or lines[0].rstrip("\r") != "---":
        raise InvalidInput(f"{where}: must start with a '---' frontmatter line (name, description)")
    fields: dict[str, str] = {}
    for number, raw in enumerate(lines[1:], start=2):
        line = raw.rstrip("\r")
        if line == "---":
            return fields, "\n".join(lines[number:])
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = _KEY.match(line)
        if not match:
            raise InvalidInput(f"{where}: frontmatter line {number} is not 'key: value' on one line: {line[:80]!r}")
        key, value = match.group(1), (match.group(2) or "").strip()
        if key in fields:
            raise InvalidInput(f"{where}: frontmatter key {key!r} appears twice")
        if value[:1] in ("|", ">", "{", "&", "*", "!"):
            raise InvalidInput(f"{where}: frontmatter {key!r} must be a one-line text value")
        fields[key] = _unquote(value)
    raise InvalidInput(f"{where}: the frontmatter has no closing '---' line")


def _tools(value: str, where: str) -> list[str]:
    value = value.strip()
    if value.startswith("[") and value.endswith("]"):
        value = value[1:-1]
    tools = [_unquote(t.strip()) for t in value.split(",") if t.strip()]
    for tool in tools:
        if not _TOOL.match(tool):
            raise InvalidInput(f"{where}: tools entry {tool[:80]!r} is not a tool name")
    return tools


def _text(data: bytes, where: str) -> str:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{where}: not UTF-8 text") from None
    if "\x00" in text:
        raise InvalidInput(f"{where}: contains a NUL character")
    return text


def check_path(path: str, where: str) -> PurePosixPath:
    p = PurePosixPath(path)
    if (
        not path
        or p.is_absolute()
        or ".." in p.parts
        or "." in path.split("/")
        or "\x00" in path
        or "\\" in path
        or path.startswith("~")
        or str(p) != path
        or len(path) > 255
    ):
        raise InvalidInput(f"{where}: path {path[:120]!r} is not allowed: relative, no '..', no '.', at most 255 characters")
    return p


def validate_bundle(bundle: CatalogBundle, limits: CatalogLimits) -> dict[str, Any]:
    """Check a bundle; return the fields of its CatalogEntry (description, files, size,
    tools, model). InvalidInput names the first problem."""
    kind, name = bundle.kind, check_name(bundle.kind, bundle.name)
    where = f"{kind} {name!r}"
    paths = [f.path for f in bundle.files]
    if len(set(paths)) != len(paths):
        raise InvalidInput(f"{where}: a file appears twice")
    if paths != sorted(paths):
        raise InvalidInput(f"{where}: files must be sorted by path")
    if len(paths) > limits.max_files:
        raise InvalidInput(f"{where}: {len(paths)} files, over the limit of {limits.max_files} (TASKBUS_CATALOG_MAX_FILES)")
    total = 0
    for f in bundle.files:
        check_path(f.path, where)
        if len(f.data) > limits.max_file_bytes:
            raise InvalidInput(
                f"{where}: {f.path} is {len(f.data)} bytes, over the limit of {limits.max_file_bytes} (TASKBUS_CATALOG_MAX_FILE_BYTES)"
            )
        total += len(f.data)
    if total > limits.max_entry_bytes:
        raise InvalidInput(f"{where}: {total} bytes in all, over the limit of {limits.max_entry_bytes} (TASKBUS_CATALOG_MAX_ENTRY_BYTES)")
    main = f"{name}.md" if kind == "agent" else SKILL_FILE
    if kind == "agent" and paths != [main]:
        raise InvalidInput(f"{where}: an agent is exactly one file, {main}")
    by_path = {f.path: f.data for f in bundle.files}
    if main not in by_path:
        raise InvalidInput(f"{where}: a skill folder needs a {SKILL_FILE} at its top")
    for p in paths:  # a file may not also be a folder of another file
        for parent in PurePosixPath(p).parents:
            if str(parent) in by_path:
                raise InvalidInput(f"{where}: {parent} is both a file and a folder")
    fields, body = parse_frontmatter(_text(by_path[main], f"{where}: {main}"), where=f"{where}: {main}")
    allowed = AGENT_KEYS if kind == "agent" else SKILL_KEYS
    unknown = sorted(set(fields) - allowed)
    if unknown:
        raise InvalidInput(f"{where}: frontmatter key {unknown[0]!r} is not supported (allowed: {', '.join(sorted(allowed))})")
    if fields.get("name") != name:
        raise InvalidInput(f"{where}: its frontmatter 'name' must be {name!r} (found {fields.get('name', '')[:80]!r})")
    description = fields.get("description", "").strip()
    if not description:
        raise InvalidInput(f"{where}: its frontmatter needs a non-empty 'description' (Claude Code picks it by that)")
    if kind == "agent" and not body.strip():
        raise InvalidInput(f"{where}: the file has no system prompt after its frontmatter")
    model = fields.get("model", "").strip()
    if model and not _MODEL.match(model):
        raise InvalidInput(f"{where}: model {model[:80]!r} is not a model name")
    tools = _tools(fields.get("tools", ""), where) if kind == "agent" else []
    return {"description": description, "files": paths, "size": total, "tools": tools, "model": model}


def make_bundle(kind: CatalogKind, name: str, files: dict[str, bytes]) -> CatalogBundle:
    return CatalogBundle(kind=kind, name=name, files=[CatalogFile(path=p, data=files[p]) for p in sorted(files)])


def bundle_bytes(bundle: CatalogBundle) -> bytes:
    return msgspec.msgpack.encode(bundle)


def bundle_hash(bundle: CatalogBundle) -> str:
    return hashlib.sha256(bundle_bytes(bundle)).hexdigest()


def catalog_home_files(bundles: list[CatalogBundle]) -> dict[str, bytes]:
    """Where Claude Code loads user-level agents and skills, relative to the sandbox home:
    ``.claude/agents/<name>.md`` and ``.claude/skills/<name>/<path>``."""
    out: dict[str, bytes] = {}
    for bundle in bundles:
        base = ".claude/agents" if bundle.kind == "agent" else f".claude/skills/{check_name(bundle.kind, bundle.name)}"
        for f in bundle.files:
            check_path(f.path, f"{bundle.kind} {bundle.name!r}")
            out[f"{base}/{f.path}"] = f.data
    return out


def _key(kind: str, name: str) -> str:
    return f"{kind}.{name}"


class Catalog:
    """The catalog buckets of one subject prefix (``Catalog.open(bus.js, bus.subjects)``)."""

    def __init__(self, kv: Any, objects: Any) -> None:
        self._kv = kv
        self._objects = objects

    @classmethod
    async def open(cls, js: JetStreamContext, bucket: str, *, create: bool = True, replicas: int = 1) -> Catalog:
        """The catalog's index KV and content Object Store (``bus._streams``: created with
        ``replicas`` when ``create``, an existing one raised to them)."""
        try:
            kv = await ensure_kv(
                js,
                KeyValueConfig(bucket=bucket, storage=StorageType.FILE, history=5, description="taskbus agents and skills (index)"),
                replicas=replicas,
                create=create,
                update=create,
            )
        except NotFoundError:
            raise NotFound(f"the catalog {bucket!r} does not exist yet: add an entry with `taskbus agents add`") from None
        try:
            objects, _ = await ensure_object_store(
                js,
                bucket,
                ObjectStoreConfig(storage=StorageType.FILE, description="taskbus agents and skills (content by hash)"),
                replicas=replicas,
                create=create,
                update=create,
            )
        except NotFoundError:
            raise NotFound(f"the catalog {bucket!r} has no content store yet") from None
        return cls(kv, objects)

    async def entries(self, kind: str | None = None) -> list[CatalogEntry]:
        try:
            keys = await self._kv.keys()
        except NoKeysError:
            return []
        out = []
        for key in sorted(keys):
            if kind is not None and not key.startswith(f"{kind}."):
                continue
            entry = await self._entry(key)
            if entry is not None:
                out.append(entry)
        return out

    async def _entry(self, key: str) -> CatalogEntry | None:
        try:
            got = await self._kv.get(key)
        except KeyNotFoundError:
            return None
        if not got.value:
            return None
        return msgspec.json.decode(got.value, type=CatalogEntry)

    async def get(self, kind: str, name: str) -> CatalogEntry:
        entry = await self._entry(_key(kind, name))
        if entry is None:
            raise NotFound(f"no {kind} {name!r} in the catalog (see `taskbus {kind}s list`)")
        return entry

    async def put(self, bundle: CatalogBundle, *, limits: CatalogLimits, actor: str) -> tuple[CatalogEntry, CatalogEntry | None]:
        """Validate and store ``bundle`` as the current version; (new entry, replaced entry
        or None). Content first, index second: a reader never sees an entry without content."""
        fields = validate_bundle(bundle, limits)
        data = bundle_bytes(bundle)
        digest = hashlib.sha256(data).hexdigest()
        previous = await self._entry(_key(bundle.kind, bundle.name))
        if previous is not None and previous.sha256 == digest:
            return previous, previous
        await self._objects.put(digest, data)
        entry = CatalogEntry(kind=bundle.kind, name=bundle.name, sha256=digest, updated_at=utcnow(), updated_by=actor, **fields)
        await self._kv.put(_key(bundle.kind, bundle.name), msgspec.json.encode(entry))
        return entry, previous

    async def remove(self, kind: str, name: str) -> CatalogEntry:
        """Drop ``name`` from the index (its content stays for tasks that pinned it)."""
        entry = await self.get(kind, name)
        await self._kv.delete(_key(kind, name))
        return entry

    async def fetch(self, ref: CatalogRef, *, limits: CatalogLimits | None = None) -> CatalogBundle:
        """The bundle ``ref`` pins, checked against its hash, name and the validation rules."""
        try:
            result = await self._objects.get(ref.sha256)
        except Exception as exc:
            raise BusError(
                f"catalog {ref.kind} {ref.name!r} version {ref.sha256[:12]} cannot be fetched: {exc or type(exc).__name__}"
            ) from None
        data = result.data or b""
        if hashlib.sha256(data).hexdigest() != ref.sha256:
            raise BusError(f"catalog {ref.kind} {ref.name!r}: stored content does not match its hash {ref.sha256[:12]}")
        try:
            bundle = msgspec.msgpack.decode(data, type=CatalogBundle)
        except msgspec.DecodeError as exc:
            raise BusError(f"catalog {ref.kind} {ref.name!r}: stored content is not a bundle ({exc})") from None
        if (bundle.kind, bundle.name) != (ref.kind, ref.name):
            raise BusError(f"catalog {ref.kind} {ref.name!r}: the stored bundle is {bundle.kind} {bundle.name!r}")
        validate_bundle(bundle, limits or CatalogLimits(max_file_bytes=1 << 62, max_entry_bytes=1 << 62, max_files=1 << 30))
        return bundle
