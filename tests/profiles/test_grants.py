"""Tool grants resolved once (bus._toolnames) and read the same way by every checker:
the gateway's tool filter, Claude Code's command line, the PreToolUse hook, the runner."""

from __future__ import annotations

import subprocess

import pytest

import bus
from bus import CLAUDE_CODE_TOOLS, Policy, expand_grants, tool_offered
from sandbox._gateway._filter import filter_tools
from sandbox._runner._claude import claude_argv
from sandbox._runner._hookpolicy import decide, rules_for


def _policy(**fields) -> Policy:
    base = {
        "task_id": "t_1",
        "kind": "task",
        "key_id": "tb_x",
        "profile": "p",
        "model": "claude-sonnet-4-6",
        "models": ["claude-sonnet-4-6"],
        "project_root": "/srv/app",
    }
    return Policy(**{**base, **fields})


def _flags(argv: list[str]) -> dict[str, str]:
    return {a.split("=", 1)[0]: a.split("=", 1)[1] for a in argv if a.startswith(("--tools=", "--allowedTools="))}


def test_claude_code_gets_real_tool_names_for_a_star_never_the_literal_star() -> None:
    flags = _flags(claude_argv("claude", _policy(tools=["*"])))
    assert flags["--tools"].split(",") == list(CLAUDE_CODE_TOOLS)
    assert flags["--allowedTools"].split(",") == list(CLAUDE_CODE_TOOLS)


def test_a_rule_grant_makes_the_tool_exist_and_permits_only_the_rule() -> None:
    flags = _flags(claude_argv("claude", _policy(tools=["Bash(ls:*)", "Task"])))
    assert flags == {"--tools": "Bash,Agent", "--allowedTools": "Bash(ls:*),Agent"}
    assert _flags(claude_argv("claude", _policy(tools=[]))) == {"--tools": ""}  # no tools at all


@pytest.mark.parametrize(
    ("grants", "kept"),
    [
        (["Bash(ls:*)"], ["Bash"]),
        (["Task"], ["Agent"]),  # the API names the sub-agent tool Agent
        (["Agent"], ["Agent"]),
        (["mcp__gh__*", "Read"], ["Read", "mcp__gh__issue"]),
        (["Read"], ["Read"]),
    ],
)
def test_the_gateway_keeps_exactly_the_tools_the_grants_offer(grants, kept) -> None:
    body = {
        "tools": [{"name": n} for n in ("Bash", "Agent", "Read", "Write", "mcp__gh__issue", "mcp__slack__post")],
        "tool_choice": {"type": "tool", "name": "Write"},
    }
    filter_tools(body, frozenset(grants))
    assert [t["name"] for t in body["tools"]] == [
        n for n in ("Bash", "Agent", "Read", "Write", "mcp__gh__issue", "mcp__slack__post") if n in kept
    ]
    assert "tool_choice" not in body  # Write was never offered


def test_hostile_tool_names_are_simply_not_offered() -> None:
    for name in ("", "Bash(", "y" * 1000, "*", "Bash(ls:*)", "mcp__", "../Bash"):
        assert not tool_offered(("Read", "mcp__gh__*"), name)
    assert tool_offered(("*",), "Anything")


def test_a_profile_lists_tools_in_order_once_and_drops_what_this_claude_code_lacks() -> None:
    assert expand_grants(["Read", "Task", "Agent", "MultiEdit", "Bash(ls:*)", "Bash(ls:*)"]) == ["Read", "Agent", "Bash(ls:*)"]
    assert expand_grants(["Bash(ls:*)", "Bash"]) == ["Bash"]


def _hook(policy: Policy, tool: str, tool_input: dict) -> subprocess.CompletedProcess[str]:
    """The runner-side PreToolUse decision for one call, shaped like the hook's exit."""
    event = {"tool_name": tool, "tool_input": tool_input, "cwd": "/workspace"}
    denial = decide(rules_for(policy), event)
    if denial is None:
        return subprocess.CompletedProcess([], 0, "", "")
    return subprocess.CompletedProcess([], 2, "", f"[taskbus policy: {denial.kind}] {denial.reason}")


@pytest.mark.parametrize(
    ("command", "allowed"),
    [
        ("ls", True),
        ("ls -la /workspace", True),
        ("cat /etc/passwd", False),
        ("ls; cat /etc/passwd", False),
        ("ls && id", False),
        ("lsblk", False),
        ("echo $(ls)", False),
    ],
)
def test_the_hook_lets_a_rule_granted_bash_run_only_matching_commands(command: str, allowed: bool) -> None:
    done = _hook(_policy(tools=["Bash(ls:*)", "Read"]), "Bash", {"command": command})
    assert (done.returncode == 0) is allowed, done.stderr
    if not allowed:
        assert done.returncode == 2 and "[taskbus policy: tool_denied]" in done.stderr
        assert "not covered by the task's grants (Bash(ls:*))" in done.stderr


def test_the_hook_allows_the_sub_agent_tool_under_either_name_when_granted() -> None:
    developer = _policy(tools=["Agent", "Read"], agents=["general-purpose"])
    assert _hook(developer, "Agent", {"subagent_type": "general-purpose", "prompt": "x"}).returncode == 0
    assert _hook(_policy(tools=["Task"], agents=["general-purpose"]), "Agent", {"prompt": "x"}).returncode == 0
    assert _hook(_policy(tools=["Read"]), "Agent", {"prompt": "x"}).returncode == 2


@pytest.mark.parametrize(("fs_access", "writable"), [("readwrite", True), ("readonly", False)])
def test_the_hook_allows_writes_under_project_only_for_readwrite(fs_access: str, writable: bool) -> None:
    policy = _policy(tools=["Write"], fs_access=fs_access)
    assert (_hook(policy, "Write", {"file_path": "/project/a.txt", "content": "x"}).returncode == 0) is writable
    assert _hook(policy, "Write", {"file_path": "/workspace/a.txt", "content": "x"}).returncode == 0
    assert _hook(policy, "Read", {"file_path": "/project/a.txt"}).returncode == 2  # Read not granted


def test_bus_exports_the_grant_helpers() -> None:
    assert bus.canonical_tool("Task") == "Agent" and bus.tool_names(["Bash(ls:*)"]) == ["Bash"]


@pytest.mark.parametrize(
    ("fs_access", "mounted", "writable"), [("readwrite", "/srv/app", True), ("readonly", "/srv/app", False), ("none", None, False)]
)
def test_the_project_is_mounted_writable_only_for_readwrite(fs_access: str, mounted: str | None, writable: bool) -> None:
    from sandbox._sandboxes._spec import spec_from_policy

    spec = spec_from_policy(_policy(fs_access=fs_access), runner_id="r", workspace="/tmp/w")
    assert (spec.project, spec.project_writable) == (mounted, writable)


def test_a_rule_with_a_comma_is_refused_since_claude_code_would_split_it() -> None:
    from bus import InvalidInput, Settings, TaskRequest
    from profiles import default_profiles, profile_from_mapping, resolve_policy

    with pytest.raises(InvalidInput, match=r"unknown tool 'Bash\(ls,Write:\*\)'"):
        profile_from_mapping("p", {"tools": ["Bash(ls,Write:*)"]})
    with pytest.raises(InvalidInput, match="unknown tool"):
        resolve_policy(
            default_profiles()["developer"],
            TaskRequest(description="x", allow_tools=["Bash(ls,Write:*)"]),
            task_id="t_1",
            key_id="tb_x",
            model="claude-haiku-4-5",
            settings=Settings.load({}),
        )
