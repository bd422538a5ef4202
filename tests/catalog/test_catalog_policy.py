"""Policy chooses: a profile's agents/skills and a request's narrowing resolve against the
catalog's current entries to the exact set a task installs, pinned by hash."""

from __future__ import annotations

import pytest

from bus import CatalogRef, PolicyDenied, Settings, TaskRequest
from profiles import profile_from_mapping, resolve_policy

SETTINGS = Settings.load({}, data_dir="/tmp/unused")
CATALOG = [
    CatalogRef(kind="agent", name="scribe", sha256="a" * 64),
    CatalogRef(kind="agent", name="reviewer", sha256="b" * 64),
    CatalogRef(kind="skill", name="notes-kit", sha256="c" * 64),
]


def profile(agents: list[str], skills: list[str]):
    return profile_from_mapping(
        "p", {"tools": ["Read", "Agent", "Skill"], "agents": agents, "skills": skills, "models": ["claude-haiku-4-5"]}
    )


def resolve(prof, catalog=CATALOG, **asked):
    return resolve_policy(
        prof, TaskRequest(description="x", **asked), task_id="t_1", key_id="k", model="claude-haiku-4-5", settings=SETTINGS, catalog=catalog
    )


def test_star_grants_every_builtin_agent_and_catalog_entry_pinned_by_hash():
    policy = resolve(profile(["*"], ["*"]))
    assert policy.agents == ["general-purpose", "Explore", "Plan", "reviewer", "scribe"]
    assert policy.skills == ["notes-kit"]
    assert [(r.kind, r.name, r.sha256[:1]) for r in policy.catalog] == [
        ("agent", "reviewer", "b"),
        ("agent", "scribe", "a"),
        ("skill", "notes-kit", "c"),
    ]


def test_a_request_narrows_to_exactly_what_it_names_and_builtins_stay_selectable():
    policy = resolve(profile(["*"], ["*"]), allow_agents=["scribe", "Explore"], allow_skills=[])
    assert policy.agents == ["scribe", "Explore"] and policy.skills == []
    assert [r.name for r in policy.catalog] == ["scribe"]


def test_an_entry_the_profile_does_not_grant_is_refused_listing_what_the_key_may_use():
    with pytest.raises(PolicyDenied) as refused:
        resolve(profile(["scribe", "Plan"], []), allow_agents=["reviewer"])
    assert refused.value.message == "agent 'reviewer' is not allowed by profile 'p' (this key may use: Plan, scribe)"
    assert refused.value.code == "permission_denied"


def test_an_unknown_or_removed_entry_is_refused_at_admission_and_a_profile_default_drops_it():
    with pytest.raises(PolicyDenied, match=r"skill 'notes-kit' is not in the catalog \(this key may use: none\)"):
        resolve(profile([], ["notes-kit"]), catalog=CATALOG[:2], allow_skills=["notes-kit"])
    policy = resolve(profile(["scribe"], ["notes-kit"]), catalog=[])
    assert policy.agents == [] and policy.skills == [] and policy.catalog == []


def test_without_a_catalog_names_pass_as_granted_and_nothing_is_pinned():
    policy = resolve_policy(
        profile(["scribe"], ["pdf"]), TaskRequest(description="x"), task_id="t_1", key_id="k", model="claude-haiku-4-5", settings=SETTINGS
    )
    assert policy.agents == ["scribe"] and policy.skills == ["pdf"] and policy.catalog == []
