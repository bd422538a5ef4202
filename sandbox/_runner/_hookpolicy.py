"""The PreToolUse decision: may this tool call of Claude Code run under the task's rules?

A pure function, run in the runner (the policy decision point); the hook inside the
sandbox only forwards Claude Code's hook event here and obeys the answer
(``_hooksocket.py``). Nothing the agent controls can change the rules or the verdict.

Tool names and grants go through ``bus.canonical_tool``/``parse_grant``/
``command_matches``: ``Task`` and ``Agent`` are one tool; a bare ``Bash`` allows every
command the deny list does not refuse; ``Bash(ls:*)`` allows only matching commands;
``WebFetch(domain:example.com)`` only that host (and its subdomains). Rule grants of
other tools are refused (fail closed): grant the bare tool instead.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlsplit

from bus import Grant, Policy, canonical_tool, command_matches, parse_grant

# Commands refused even when Bash is allowed: network tools, privilege and namespace
# changes, container control, reading other processes' environments.
DENY_COMMANDS: tuple[tuple[str, str], ...] = (
    (r"(^|[\s;&|(`$])(curl|wget|nc|ncat|netcat|socat|telnet|ssh|scp|sftp|rsync|ftp)(\s|$)", "network tool"),
    (r"/dev/(tcp|udp)/", "raw network socket"),
    (r"(^|[\s;&|(`$])(sudo|su|doas|pkexec|chroot|nsenter|unshare|mount|umount|setcap|capsh)(\s|$)", "privilege or namespace change"),
    (r"(^|[\s;&|(`$])(docker|podman|ctr|kubectl)(\s|$)|docker\.sock", "container control"),
    (r"/proc/[0-9]+/(environ|mem|root)|/proc/self/(environ|mem|root)", "reading process memory or environment"),
    (r"(^|\s)rm\s+(-[a-zA-Z]*\s+)*/(\s|$|\*)", "deleting the root filesystem"),
    (r":\(\)\s*\{\s*:\|:&\s*\};:", "fork bomb"),
)
_DENY = tuple((re.compile(pattern), why) for pattern, why in DENY_COMMANDS)

# tool -> (input key holding a path, "read" or "write")
PATH_KEYS: dict[str, tuple[str, str]] = {
    "Read": ("file_path", "read"),
    "Write": ("file_path", "write"),
    "Edit": ("file_path", "write"),
    "MultiEdit": ("file_path", "write"),
    "NotebookEdit": ("notebook_path", "write"),
    "Glob": ("path", "read"),
    "Grep": ("path", "read"),
    "LS": ("path", "read"),
}
CRITICAL_KINDS = frozenset({"blocked_command", "path_denied"})
MAX_DETAIL = 300


@dataclass(frozen=True)
class HookRules:
    """What one task's tool calls may do (built from its signed policy)."""

    grants: tuple[Grant, ...]
    agents: tuple[str, ...]
    skills: tuple[str, ...]
    write_roots: tuple[str, ...]
    read_roots: tuple[str, ...]


@dataclass(frozen=True)
class Denial:
    kind: str
    """tool_denied, path_denied, blocked_command, agent_denied, skill_denied, hook_error."""
    reason: str

    @property
    def severity(self) -> Literal["warning", "critical"]:
        return "critical" if self.kind in CRITICAL_KINDS else "warning"


def rules_for(policy: Policy) -> HookRules:
    grants = []
    for text in policy.tools:
        try:
            grants.append(parse_grant(text))
        except ValueError:
            continue  # a grant nobody understands allows nothing
    read_roots = ("/project",) if policy.fs_access != "none" and policy.project_root else ()
    return HookRules(
        grants=tuple(grants),
        agents=tuple(policy.agents),
        skills=tuple(policy.skills),
        write_roots=("/workspace", "/tmp", *(read_roots if policy.fs_access == "readwrite" else ())),
        read_roots=(*read_roots, "/home/agent"),
    )


def decide(rules: HookRules, event: Any) -> Denial | None:
    """None to let the call run, else why not. ``event`` is Claude Code's PreToolUse
    hook input as sent by the hook (untrusted: any shape)."""
    if not isinstance(event, dict):
        return Denial("hook_error", "the hook input is not a JSON object")
    raw_tool = event.get("tool_name")
    tool_input = event.get("tool_input")
    if not isinstance(raw_tool, str) or not isinstance(tool_input, dict):
        return Denial("hook_error", "the hook input has no tool_name or tool_input")
    tool = canonical_tool(raw_tool)
    denial = _check_grant(rules, tool, raw_tool, tool_input)
    if denial is None and tool in PATH_KEYS:
        denial = _check_path(rules, tool, tool_input, event.get("cwd"), event.get("taskbus_realpath"))
    if denial is None and tool == "Bash":
        denial = _check_command(_text(tool_input.get("command")))
    if denial is None and tool == "Agent":
        agent = _text(tool_input.get("subagent_type")) or "general-purpose"
        if not _listed(agent, rules.agents):
            denial = Denial("agent_denied", f"agent {agent[:MAX_DETAIL]} is not allowed for this task")
    if denial is None and tool == "Skill":
        skill = _text(tool_input.get("skill")) or _text(tool_input.get("name"))
        if not _listed(skill, rules.skills):
            denial = Denial("skill_denied", f"skill {skill[:MAX_DETAIL]} is not allowed for this task")
    return denial


def _check_grant(rules: HookRules, tool: str, raw_tool: str, tool_input: dict[str, Any]) -> Denial | None:
    if any(g.tool == "*" for g in rules.grants):
        return None
    matching = [g for g in rules.grants if g.tool == tool]
    if any(g.rule is None for g in matching):
        return None
    for grant in matching:
        if _rule_allows(grant, tool_input):
            return None
    if matching:
        return Denial("tool_denied", f"this {tool} call is not covered by the task's grants ({', '.join(map(str, matching))})")
    allowed = ", ".join(map(str, rules.grants)) or "none"
    return Denial("tool_denied", f"tool {raw_tool[:100]} is not allowed for this task (allowed: {allowed})")


def _rule_allows(grant: Grant, tool_input: dict[str, Any]) -> bool:
    rule = grant.rule or ""
    if grant.tool == "Bash":
        return command_matches(rule, _text(tool_input.get("command")))
    if grant.tool == "WebFetch" and rule.startswith("domain:"):
        domain = rule[len("domain:") :].strip().lower()
        host = (urlsplit(_text(tool_input.get("url"))).hostname or "").lower()
        return bool(domain) and (host == domain or host.endswith("." + domain))
    return False


def _check_path(rules: HookRules, tool: str, tool_input: dict[str, Any], cwd: Any, resolved: Any) -> Denial | None:
    key, mode = PATH_KEYS[tool]
    raw = tool_input.get(key)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        return Denial("path_denied", f"{tool}: {key} must be a string")
    base = cwd if isinstance(cwd, str) and cwd.startswith("/") else "/workspace"
    paths = [posixpath.normpath(posixpath.join(base, raw))]
    # the hook resolves links inside the sandbox; both the path and its target must be in bounds
    real = resolved.get(key) if isinstance(resolved, dict) else None
    if isinstance(real, str) and real:
        paths.append(posixpath.normpath(posixpath.join(base, real)))
    roots = rules.write_roots if mode == "write" else rules.write_roots + rules.read_roots
    for path in paths:
        if not _within(path, roots):
            verb = "write" if mode == "write" else "read"
            return Denial("path_denied", f"{tool} may not {verb} {path[:MAX_DETAIL]}: only {', '.join(roots)} are {verb}able")
    return None


def _check_command(command: str) -> Denial | None:
    for pattern, why in _DENY:
        if pattern.search(command):
            return Denial("blocked_command", f"command refused ({why}): {command[:MAX_DETAIL]}")
    return None


def _within(path: str, roots: tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def _listed(name: str, names: tuple[str, ...]) -> bool:
    return "*" in names or name in names


def _text(value: Any) -> str:
    return value if isinstance(value, str) else ""
