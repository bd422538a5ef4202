#!/usr/bin/env python3
"""taskbus PreToolUse hook for Claude Code, run inside the sandbox (stdlib only).

Mounted read-only at /opt/taskbus/hook.py and registered in the read-only managed
settings, so the agent can neither edit nor bypass it. The task's rules come in the
environment variable TASKBUS_HOOK_POLICY, which the runner sets on the Claude Code
process (hooks inherit it; nothing the agent runs can change its parent's environment). Reads the hook event (JSON) on stdin; to block a
call it prints a reason on stderr and exits 2. Every reason starts with
``[taskbus policy: <kind>]`` so the runner can turn the blocked call into a
``security`` event.
"""

import fnmatch
import json
import os
import re
import sys

POLICY_ENV = "TASKBUS_HOOK_POLICY"
PATH_KEYS = {
    "Read": ("file_path", "read"),
    "Write": ("file_path", "write"),
    "Edit": ("file_path", "write"),
    "MultiEdit": ("file_path", "write"),
    "NotebookEdit": ("notebook_path", "write"),
    "Glob": ("path", "read"),
    "Grep": ("path", "read"),
    "LS": ("path", "read"),
}
AGENT_TOOLS = ("Task", "Agent")


def block(kind, detail):
    sys.stderr.write("[taskbus policy: %s] %s\n" % (kind, detail))
    sys.exit(2)


def within(path, roots):
    return any(path == root or path.startswith(root.rstrip("/") + "/") for root in roots)


def check_path(policy, tool, tool_input, cwd):
    key, mode = PATH_KEYS[tool]
    raw = tool_input.get(key)
    if not raw:
        return
    if not isinstance(raw, str):
        block("path_denied", "%s: %s must be a string" % (tool, key))
    path = os.path.realpath(os.path.join(cwd or "/workspace", raw))
    writable = policy.get("write_roots", [])
    readable = writable + policy.get("read_roots", [])
    if mode == "write" and not within(path, writable):
        block("path_denied", "%s may not write %s: only %s are writable" % (tool, path, ", ".join(writable)))
    if mode == "read" and not within(path, readable):
        block("path_denied", "%s may not read %s: only %s are readable" % (tool, path, ", ".join(readable)))


def check_command(policy, command):
    for rule in policy.get("deny_commands", []):
        if re.search(rule["pattern"], command):
            block("blocked_command", "command refused (%s): %s" % (rule["why"], command[:300]))


ALIASES = {"Task": "Agent", "BashOutput": "TaskOutput", "KillShell": "TaskStop", "KillBash": "TaskStop"}
SHELL_META = re.compile(r"[;&|`$<>()\n\r]")
GRANT = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)\(([^()]+)\)$")


def allowed(name, names):
    return "*" in names or name in names


def command_matches(rule, command):
    """Mirror of bus.command_matches (this file runs in the sandbox, stdlib only)."""
    command = command.strip()
    if rule.endswith(":*"):
        prefix = rule[:-2].strip()
        return not SHELL_META.search(command) and (command == prefix or command.startswith(prefix + " "))
    if "*" in rule:
        return not SHELL_META.search(command) and fnmatch.fnmatchcase(command, rule)
    return command == rule.strip()


def tool_allowed(tool, tool_input, grants):
    """A tool granted whole, or by rules (``Bash(ls:*)``): then a Bash command must match
    one (Claude Code itself lets read-only commands like ``cat`` through)."""
    tool = ALIASES.get(tool, tool)
    if "*" in grants or tool in [ALIASES.get(g, g) for g in grants]:
        return True
    rules = [m.group(2) for m in (GRANT.match(g) for g in grants) if m and ALIASES.get(m.group(1), m.group(1)) == tool]
    if not rules:
        return False
    if tool != "Bash":
        return True  # other tools' rules (WebFetch(domain:...)) are Claude Code's to check
    command = str(tool_input.get("command", ""))
    return any(command_matches(rule, command) for rule in rules)


def main():
    try:
        event = json.load(sys.stdin)
        policy = json.loads(os.environ[POLICY_ENV])
    except Exception as exc:  # fail closed: no rules, no tools
        block("hook_error", "cannot read the hook input or policy: %s" % exc)
    tool = event.get("tool_name") or ""
    tool_input = event.get("tool_input") or {}
    if not tool_allowed(tool, tool_input, policy.get("tools", [])):
        if tool == "Bash" and any(g.startswith("Bash(") for g in policy.get("tools", [])):
            rules = ", ".join(g for g in policy.get("tools", []) if g.startswith("Bash("))
            block("tool_denied", "command %r matches none of this task's Bash rules (%s)" % (str(tool_input.get("command", ""))[:300], rules))
        block("tool_denied", "tool %s is not allowed for this task (allowed: %s)" % (tool, ", ".join(policy.get("tools", [])) or "none"))
    if tool in PATH_KEYS:
        check_path(policy, tool, tool_input, event.get("cwd"))
    if tool == "Bash":
        check_command(policy, str(tool_input.get("command", "")))
    if tool in AGENT_TOOLS:
        agent = tool_input.get("subagent_type") or "general-purpose"
        if not allowed(agent, policy.get("agents", [])):
            block("agent_denied", "agent %s is not allowed for this task" % agent)
    if tool == "Skill":
        skill = tool_input.get("skill") or tool_input.get("name") or ""
        if not allowed(skill, policy.get("skills", [])):
            block("skill_denied", "skill %s is not allowed for this task" % skill)
    sys.exit(0)


if __name__ == "__main__":
    main()
