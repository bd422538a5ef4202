"""Policy resolution (profile x request -> ``bus.Policy``) and job signing.

``resolve_policy`` is a pure function: no database, no clock but ``issued_at``.
The result is the intersection of what the request asks and what the profile grants:

- a request that names a tool, agent, skill, model, project, more time or more cost
  than granted is denied (``PolicyDenied``, the message names the missing permission);
- what the request leaves out is filled from the profile (everything it grants) and,
  for resources the profile leaves unset, from the Settings defaults;
- ``max_turns`` is clamped to the profile's; the default cost cap is clamped to the
  remaining budget when the caller passes it.
"""

from __future__ import annotations

import posixpath
import secrets
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta

import msgspec

from bus import (
    BUILTIN_AGENTS,
    CatalogEntry,
    CatalogRef,
    CompleteRequest,
    InvalidInput,
    Job,
    Policy,
    PolicyDenied,
    Request,
    Settings,
    TaskRequest,
    expand_grants,
    grant_covers,
    sign_job,
    utcnow,
    verify_job,
)

from ._profiles import Profile, check_tool_name

_KIND_TOOL = {"complete": "complete", "task": "run_task"}


def _deny(profile: Profile, what: str, permission: str) -> PolicyDenied:
    return PolicyDenied(f"profile {profile.name!r} does not allow {what}", profile=profile.name, permission=permission)


def tool_granted(granted: list[str], name: str) -> bool:
    """Is tool ``name`` (a name, ``Tool(rule)`` or MCP name) within ``granted``?"""
    return grant_covers(granted, name)


def _names(profile: Profile, field: str, granted: list[str], asked: list[str] | None) -> list[str]:
    if field == "tools":
        return _tools(profile, granted, asked)
    if asked is None:
        return list(granted)
    singular = field[:-1]
    out: list[str] = []
    for name in asked:
        if not ("*" in granted or name in granted):
            raise _deny(profile, f"{singular} {name!r}", f"{field}:{name}")
        if name not in out:
            out.append(name)
    return out


def _chosen(
    profile: Profile, field: str, granted: list[str], asked: list[str] | None, available: dict[str, CatalogItem | None]
) -> list[str]:
    """The exact agents or skills of a task, from the profile's grants (names or ``*``),
    the request's narrowing and what exists (built-in agents and the catalog's entries).

    A name the request asks for must be granted and exist, else PolicyDenied listing
    what this caller may use; a name only the profile lists that no longer exists is
    left out (removing an entry must not lock out every task of a profile)."""
    usable = [n for n in available if "*" in granted or n in granted]
    singular = field[:-1]
    if asked is None:
        return usable
    out: list[str] = []
    for name in asked:
        if name not in usable:
            why = "is not in the catalog" if name not in available else f"is not allowed by profile {profile.name!r}"
            raise PolicyDenied(
                f"{singular} {name!r} {why} (this key may use: {', '.join(usable) or 'none'})",
                profile=profile.name,
                permission=f"{field}:{name}",
            )
        if name not in out:
            out.append(name)
    return out


CatalogItem = CatalogRef | CatalogEntry
"""A catalog entry as the catalog lists it, or as a policy pins it: both name kind, name and hash."""


def _available(catalog: Sequence[CatalogItem]) -> tuple[dict[str, CatalogItem | None], dict[str, CatalogItem | None]]:
    """(agents, skills) that exist: the built-in agents, then the catalog's entries by name."""
    entries = sorted(((ref.kind, ref.name), ref) for ref in catalog)
    agents: dict[str, CatalogItem | None] = dict.fromkeys(BUILTIN_AGENTS)
    agents.update({n: r for (k, n), r in entries if k == "agent"})
    return agents, {n: r for (k, n), r in entries if k == "skill"}


def offered_catalog(profile: Profile, catalog: Sequence[CatalogItem]) -> tuple[list[str], list[str]]:
    """The agents and skills a key of ``profile`` may ask for (what MCP discovery lists)."""
    agents, skills = _available(catalog)
    return (_chosen(profile, "agents", profile.agents, None, agents), _chosen(profile, "skills", profile.skills, None, skills))


def _tools(profile: Profile, granted: list[str], asked: list[str] | None) -> list[str]:
    """Concrete grants (``bus.expand_grants``): ``*`` becomes the installed Claude Code's
    tools, ``Task`` becomes ``Agent``; a request may narrow the profile's grants, never
    widen them."""
    if asked is None:
        return expand_grants(granted)
    for name in asked:
        check_tool_name(name)
        if not tool_granted(granted, name):
            raise _deny(profile, f"tool {name!r}", f"tools:{name}")
    return expand_grants(asked)


def offered_models(profile: Profile, settings: Settings) -> list[str]:
    """The models a profile grants, ``*`` expanded to every model this installation
    prices (``Settings.prices``, the same set the router chooses from)."""
    wild = sorted(settings.prices) if "*" in profile.models else []
    return list(dict.fromkeys([m for m in profile.models if m != "*"] + wild))


def _normal(path: str) -> str:
    path = posixpath.normpath(path)
    return "/" + path.lstrip("/") if path.startswith("//") else path


def _under_roots(profile: Profile, path: str, realpath: Callable[[str], str] | None = None) -> bool:
    for root in profile.project_roots:
        root_n = _normal(realpath(root) if realpath is not None else root)
        if root_n == "/" or path == root_n or path.startswith(root_n.rstrip("/") + "/"):
            return True
    return False


def _project(profile: Profile, project: str | None, realpath: Callable[[str], str] | None) -> str | None:
    if project is None:
        return None
    if profile.fs_access == "none":
        raise _deny(profile, f"filesystem access (project {project!r})", "fs_access")
    if not project.startswith("/"):
        raise InvalidInput(f"project {project!r} must be an absolute path", field="project")
    roots = ", ".join(profile.project_roots) or "none configured"
    path = _normal(project)
    if not _under_roots(profile, path):
        raise _deny(profile, f"project root {path!r} (allowed roots: {roots})", "project_roots")
    if realpath is not None:  # symlinks must not lead out of the roots
        real = _normal(realpath(path))
        if not _under_roots(profile, real, realpath):  # a root may itself be a link
            raise _deny(profile, f"project root {path!r}: it resolves to {real!r} (allowed roots: {roots})", "project_roots")
        path = real
    return path


def resolve_policy(
    profile: Profile,
    request: Request,
    *,
    task_id: str,
    key_id: str,
    model: str,
    settings: Settings,
    routing_reason: str = "",
    budget_remaining: float | None = None,
    issued_at: datetime | None = None,
    realpath: Callable[[str], str] | None = None,
    catalog: Sequence[CatalogItem] | None = None,
) -> Policy:
    """The Policy for one task, or PolicyDenied naming what the profile does not grant.

    ``model`` is the concrete model the router chose; ``budget_remaining`` (USD, from
    ``Store.remaining_budget``) clamps the default cost cap when the request gives none.
    ``catalog`` is the catalog's current entries (``bus.Catalog.entries``): given, the
    task's agents and skills are resolved against it and the built-in agents to the exact
    set (``*`` expanded) and ``Policy.catalog`` pins the chosen entries' hashes; None
    keeps the names as granted (no catalog consulted, nothing installed).
    """
    kind = "complete" if isinstance(request, CompleteRequest) else "task"
    if kind not in profile.kinds:
        raise _deny(profile, f"{_KIND_TOOL[kind]} ({kind} requests)", f"kinds:{kind}")
    if kind == "task" and profile.network == "none":
        raise _deny(
            profile,
            "agentic tasks: its network is 'none', so a sandbox could not even reach the model API "
            "(use a profile with network 'model-api')",
            "network:model-api",
        )
    offered = offered_models(profile, settings)
    for name in (request.model, model):
        if name not in ("", "auto") and name not in offered:
            raise _deny(profile, f"model {name!r} (it allows: {', '.join(offered) or 'none'})", f"models:{name}")

    cap = profile.max_cost_per_task_usd
    if request.max_cost_usd is not None:
        if request.max_cost_usd > cap:
            raise _deny(
                profile,
                f"a cost cap of ${request.max_cost_usd:.4f} per task (at most ${cap:.4f})",
                "max_cost_per_task_usd",
            )
        cap = request.max_cost_usd
    elif budget_remaining is not None:
        cap = max(0.0, min(cap, budget_remaining))

    timeout = profile.timeout_s or settings.default_timeout_s
    issued = issued_at or utcnow()
    base = Policy(
        task_id=task_id,
        kind=kind,
        key_id=key_id,
        profile=profile.name,
        model=model,
        models=sorted(set(offered) | {model}),
        cpus=profile.cpus or settings.default_cpus,
        memory_mb=profile.memory_mb or settings.default_memory_mb,
        pids=profile.pids or settings.default_pids,
        disk_mb=profile.disk_mb or settings.default_disk_mb,
        max_cost_usd=cap,
        network=profile.network,
        issued_at=issued,
        routing_reason=routing_reason,
        nonce=secrets.token_hex(16),
        expires_at=issued + timedelta(seconds=settings.job_expiry_s),
        timeout_s=timeout,
        max_turns=1,
        fs_access="none",
    )
    if isinstance(request, CompleteRequest):
        return base

    assert isinstance(request, TaskRequest)
    if request.timeout_s is not None:
        if request.timeout_s > timeout:
            raise _deny(profile, f"{request.timeout_s}s of execution time (at most {timeout}s)", "timeout_s")
        timeout = request.timeout_s
    turns = min(request.max_turns or profile.max_turns, profile.max_turns)
    refs: list[CatalogItem] = []
    if catalog is None:
        agents = _names(profile, "agents", profile.agents, request.allow_agents)
        skills = _names(profile, "skills", profile.skills, request.allow_skills)
    else:
        agent_refs, skill_refs = _available(catalog)
        agents = _chosen(profile, "agents", profile.agents, request.allow_agents, agent_refs)
        skills = _chosen(profile, "skills", profile.skills, request.allow_skills, skill_refs)
        refs = [r for n in agents if (r := agent_refs[n]) is not None] + [r for n in skills if (r := skill_refs[n]) is not None]
    return msgspec.structs.replace(
        base,
        tools=_names(profile, "tools", profile.tools, request.allow_tools),
        agents=agents,
        skills=skills,
        catalog=[CatalogRef(kind=r.kind, name=r.name, sha256=r.sha256) for r in refs],
        timeout_s=timeout,
        max_turns=turns,
        fs_access=profile.fs_access if request.project is not None else "none",
        project_root=_project(profile, request.project, realpath),
    )


def sign_policy(
    policy: Policy, request: Request, secret: str | bytes, *, submitted_at: datetime | None = None, retryable: bool = False
) -> Job:
    """The signed Job for ``policy`` and ``request`` (HMAC-SHA256 via ``bus.sign_job``)."""
    signature = sign_job(policy.task_id, policy, request, secret)
    return Job(
        task_id=policy.task_id,
        policy=policy,
        request=request,
        signature=signature,
        submitted_at=utcnow() if submitted_at is None else submitted_at,
        retryable=retryable,
    )


def verify(job: Job, secret: str | bytes) -> None:
    """Raise ``bus.SignatureError`` unless the job's signature matches (what runners call)."""
    verify_job(job, secret)
