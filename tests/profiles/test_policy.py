"""Policy resolution: the intersection of the request and the profile, or a named denial."""

from __future__ import annotations

import msgspec
import pytest

from bus import CLAUDE_CODE_TOOLS, CompleteRequest, InvalidInput, PolicyDenied, Settings, TaskRequest
from profiles import Profile, default_profiles, profile_from_mapping, resolve_policy

SETTINGS = Settings.load({}, data_dir="/tmp/unused", default_cpus=1.5, default_memory_mb=999, default_timeout_s=300)
PROFILES = default_profiles()
ANALYST = PROFILES["readonly-analyst"]
DEV = profile_from_mapping(
    "dev",
    {
        "tools": ["Bash", "Read", "Edit", "mcp__github__*", "Bash(git diff:*)"],
        "agents": ["Explore"],
        "skills": ["pdf"],
        "models": ["claude-haiku-4-5", "claude-sonnet-4-6"],
        "timeout_s": 900,
        "max_turns": 40,
        "max_cost_per_task_usd": 2.0,
        "fs_access": "readwrite",
        "project_roots": ["/srv/projects"],
    },
)


def resolve(profile: Profile, request, model: str = "claude-haiku-4-5", **kwargs):
    return resolve_policy(profile, request, task_id="t_1", key_id="tb_AbCd1234", model=model, settings=SETTINGS, **kwargs)


@pytest.mark.parametrize(
    ("profile", "request_fields", "model", "denied"),
    [
        (ANALYST, {"allow_tools": ["Bash"]}, "claude-haiku-4-5", "profile 'readonly-analyst' does not allow tool 'Bash'"),
        (ANALYST, {"allow_tools": ["Read", "Write"]}, "claude-haiku-4-5", "does not allow tool 'Write'"),
        (DEV, {"allow_tools": ["mcp__slack__post"]}, "claude-haiku-4-5", "tool 'mcp__slack__post'"),
        (DEV, {"allow_agents": ["general-purpose"]}, "claude-haiku-4-5", "does not allow agent 'general-purpose'"),
        (DEV, {"allow_skills": ["xlsx"]}, "claude-haiku-4-5", "does not allow skill 'xlsx'"),
        (DEV, {}, "claude-opus-4-8", "does not allow model 'claude-opus-4-8'"),
        (DEV, {"model": "claude-opus-4-8"}, "claude-haiku-4-5", "does not allow model 'claude-opus-4-8'"),
        (DEV, {"project": "/etc"}, "claude-haiku-4-5", "does not allow project root '/etc'"),
        (DEV, {"project": "/srv/projects/../../etc"}, "claude-haiku-4-5", "project root '/etc'"),
        (DEV, {"project": "/srv/projects-evil"}, "claude-haiku-4-5", "project root '/srv/projects-evil'"),
        (PROFILES["complete-only"], {}, "claude-haiku-4-5", "does not allow run_task"),
        (ANALYST, {"project": "/srv/projects/a"}, "claude-haiku-4-5", "project root"),
        (DEV, {"timeout_s": 901}, "claude-haiku-4-5", "901s of execution time (at most 900s)"),
        (DEV, {"max_cost_usd": 2.5}, "claude-haiku-4-5", "cost cap of $2.5000 per task (at most $2.0000)"),
    ],
)
def test_a_task_asking_for_more_than_the_profile_grants_is_denied_naming_the_permission(profile, request_fields, model, denied):
    request = TaskRequest(description="do it", **request_fields)
    with pytest.raises(PolicyDenied) as refused:
        resolve(profile, request, model=model)
    assert denied in refused.value.message
    assert refused.value.code == "permission_denied"


def test_a_task_asking_for_less_gets_exactly_that():
    request = TaskRequest(
        description="x",
        allow_tools=["Read", "mcp__github__get_issue", "Bash(git diff:*)"],
        allow_agents=[],
        allow_skills=["pdf"],
        project="/srv/projects/app/",
        timeout_s=60,
        max_cost_usd=0.5,
        max_turns=5,
    )
    policy = resolve(DEV, request)
    assert policy.tools == ["Read", "mcp__github__get_issue", "Bash(git diff:*)"]
    assert policy.agents == [] and policy.skills == ["pdf"]
    assert policy.project_root == "/srv/projects/app" and policy.fs_access == "readwrite"
    assert (policy.timeout_s, policy.max_cost_usd, policy.max_turns) == (60, 0.5, 5)
    assert policy.model == "claude-haiku-4-5" and policy.models == ["claude-haiku-4-5", "claude-sonnet-4-6"]
    assert (policy.task_id, policy.key_id, policy.profile, policy.kind) == ("t_1", "tb_AbCd1234", "dev", "task")


def test_a_task_asking_for_nothing_gets_the_profile_defaults_and_settings_for_unset_limits():
    policy = resolve(DEV, TaskRequest(description="x"))
    # the rule Bash(git diff:*) is covered by the whole Bash the profile also grants
    assert policy.tools == ["Bash", "Read", "Edit", "mcp__github__*"] and policy.agents == ["Explore"] and policy.skills == ["pdf"]
    assert policy.timeout_s == 900 and policy.max_cost_usd == 2.0 and policy.max_turns == 40
    assert policy.cpus == 1.5 and policy.memory_mb == 999  # DEV leaves these to Settings
    assert policy.fs_access == "none" and policy.project_root is None


def test_limits_clamp_turns_to_the_profile_and_the_default_cap_to_the_remaining_budget():
    policy = resolve(DEV, TaskRequest(description="x", max_turns=500), budget_remaining=0.75)
    assert policy.max_turns == 40
    assert policy.max_cost_usd == 0.75
    assert resolve(DEV, TaskRequest(description="x"), budget_remaining=-1).max_cost_usd == 0.0


def test_a_star_grants_any_name_only_when_written_explicitly():
    admin = PROFILES["admin"]
    policy = resolve(admin, TaskRequest(description="x", allow_tools=["Bash", "WebFetch"], allow_agents=["any"]), model="claude-opus-4-8")
    assert policy.tools == ["Bash", "WebFetch"] and policy.agents == ["any"]
    assert policy.models == sorted(SETTINGS.prices)  # '*' is every model this installation prices
    with pytest.raises(PolicyDenied):
        resolve(DEV, TaskRequest(description="x", allow_tools=["*"]))


def test_an_unknown_tool_name_in_a_request_is_invalid_input_listing_valid_names():
    with pytest.raises(InvalidInput, match=r"unknown tool 'Bsh'.*Bash"):
        resolve(DEV, TaskRequest(description="x", allow_tools=["Bsh"]))


def test_a_complete_request_gets_no_tools_no_files_and_the_profile_cost_cap():
    policy = resolve(PROFILES["complete-only"], CompleteRequest(prompt="hi"))
    assert policy.kind == "complete" and policy.tools == [] and policy.fs_access == "none"
    assert policy.max_cost_usd == 0.25
    with pytest.raises(PolicyDenied, match="cost cap"):
        resolve(PROFILES["complete-only"], CompleteRequest(prompt="hi", max_cost_usd=1.0))


def test_a_profile_without_task_kind_denies_run_task_but_allows_complete():
    profile = profile_from_mapping("c", {"kinds": ["complete"], "models": ["claude-haiku-4-5"]})
    with pytest.raises(PolicyDenied, match="does not allow run_task"):
        resolve(profile, TaskRequest(description="x"))
    assert resolve(profile, CompleteRequest(prompt="x")).kind == "complete"


def test_a_symlink_out_of_the_allowed_roots_is_denied_when_paths_are_resolved(tmp_path):
    import os

    root = tmp_path / "projects"
    (root / "app").mkdir(parents=True)
    (tmp_path / "secret").mkdir()
    (root / "escape").symlink_to(tmp_path / "secret")
    profile = profile_from_mapping("p", {"models": ["claude-haiku-4-5"], "fs_access": "readonly", "project_roots": [str(root)]})

    policy = resolve(profile, TaskRequest(description="x", project=str(root / "app")), realpath=os.path.realpath)
    assert policy.project_root == os.path.realpath(root / "app")
    assert resolve(profile, TaskRequest(description="x", project=str(root / "escape"))).project_root  # lexical only
    with pytest.raises(PolicyDenied, match="resolves to"):
        resolve(profile, TaskRequest(description="x", project=str(root / "escape")), realpath=os.path.realpath)


def test_a_profile_without_network_cannot_run_agentic_tasks_but_can_complete() -> None:
    import msgspec

    from bus import CompleteRequest, PolicyDenied, Settings, TaskRequest
    from profiles import default_profiles, resolve_policy

    profile = msgspec.structs.replace(default_profiles()["developer"], network="none")
    with pytest.raises(PolicyDenied, match="network is 'none'") as info:
        resolve_policy(
            profile, TaskRequest(description="x"), task_id="t_1", key_id="tb_x", model=profile.models[0], settings=Settings.load({})
        )
    assert info.value.permission == "network:model-api"
    policy = resolve_policy(
        profile, CompleteRequest(prompt="hi"), task_id="t_2", key_id="tb_x", model=profile.models[0], settings=Settings.load({})
    )
    assert policy.network == "none"


def test_a_star_becomes_every_tool_and_model_of_this_installation_never_a_literal_star():
    policy = resolve(PROFILES["admin"], TaskRequest(description="x"), model="claude-sonnet-4-6")
    assert policy.tools == list(CLAUDE_CODE_TOOLS) and "*" not in policy.tools
    assert policy.models == sorted(SETTINGS.prices) and "*" not in policy.models
    complete = resolve(PROFILES["admin"], CompleteRequest(prompt="hi"), model="claude-haiku-4-5")
    assert "claude-haiku-4-5" in complete.models and "*" not in complete.models
    with pytest.raises(PolicyDenied, match=r"does not allow model 'gpt-4' \(it allows: claude-haiku-4-5"):
        resolve(PROFILES["admin"], TaskRequest(description="x", model="gpt-4"), model="claude-sonnet-4-6")


def test_the_old_sub_agent_name_task_means_agent_in_profiles_and_requests():
    developer = PROFILES["developer"]
    assert "Agent" in resolve(developer, TaskRequest(description="x")).tools
    assert resolve(developer, TaskRequest(description="x", allow_tools=["Task", "Read"])).tools == ["Agent", "Read"]
    old = profile_from_mapping("old", {"tools": ["Task", "Read"], "models": ["claude-haiku-4-5"]})
    assert resolve(old, TaskRequest(description="x", allow_tools=["Agent"])).tools == ["Agent"]


def test_a_rule_grant_gives_exactly_the_rule_and_never_the_whole_tool():
    ls_only = profile_from_mapping("ls-only", {"tools": ["Bash(ls:*)", "Read"], "models": ["claude-haiku-4-5"]})
    assert resolve(ls_only, TaskRequest(description="x")).tools == ["Bash(ls:*)", "Read"]
    assert resolve(ls_only, TaskRequest(description="x", allow_tools=["Bash(ls:*)"])).tools == ["Bash(ls:*)"]
    for wider in ("Bash", "Bash(cat:*)"):
        with pytest.raises(
            PolicyDenied, match=f"does not allow tool {wider!r}".replace("(", r"\(").replace(")", r"\)").replace("*", r"\*")
        ):
            resolve(ls_only, TaskRequest(description="x", allow_tools=[wider]))


def test_a_tool_this_claude_code_does_not_offer_is_refused_listing_the_real_ones():
    for name in ("MultiEdit", "TodoWrite", "Bsh(ls:*)"):
        with pytest.raises(InvalidInput) as refused:
            profile_from_mapping("p", {"tools": [name]})
        assert f"unknown tool {name!r}" in refused.value.message
        assert "Agent, Bash," in refused.value.message and "Task (= Agent)" in refused.value.message
    with pytest.raises(InvalidInput, match="unknown tool 'MultiEdit'"):
        resolve(DEV, TaskRequest(description="x", allow_tools=["MultiEdit"]))


def test_a_stored_profile_naming_a_retired_tool_grants_the_rest():
    stored = msgspec.structs.replace(DEV, tools=["Read", "MultiEdit", "TodoWrite"])  # written before 2.1
    assert resolve(stored, TaskRequest(description="x")).tools == ["Read"]


async def test_a_profile_stored_with_retired_tools_loads_without_them_and_can_still_be_updated(settings, bus):
    from profiles import Store
    from profiles._profiles import encode_profile

    async with Store.for_settings(settings):
        pass  # creates and seeds the control plane
    old = msgspec.structs.replace(PROFILES["developer"], tools=["Bash", "MultiEdit", "TodoWrite", "Task"])
    kv = await bus.js.key_value(bus.subjects.control_bucket)  # as a taskbus before Claude Code 2.1 wrote it
    await kv.put("profile.developer", encode_profile(old).encode())
    async with Store.for_settings(settings) as store:
        assert (await store.get_profile("developer")).tools == ["Bash", "Task"]
        updated = await store.update_profile("developer", project_roots=["/srv/projects"])
    assert updated.tools == ["Bash", "Task"] and updated.project_roots == ["/srv/projects"]
