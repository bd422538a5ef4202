"""Claude Code tool names and permission-rule grants, one place for every checker.

Policy resolution (server), the gateway's tool filter and the PreToolUse decision
(runner) all compare tool names; they do it through these functions so that an old
name and its new one (Claude Code 2.1 renamed the sub-agent tool ``Task`` to
``Agent``) and a rule grant such as ``Bash(ls:*)`` mean the same thing everywhere.

A grant is either a bare tool name (``Read``), a tool with a Claude Code permission
rule (``Bash(git status:*)``, ``WebFetch(domain:example.com)``), or ``*`` (every tool the
installed Claude Code offers).
"""

from __future__ import annotations

import fnmatch
import re
from typing import NamedTuple

# The Claude Code release these names were read from, and every built-in tool it offers
# in ``claude -p`` when ``--tools`` names it (tests/profiles/test_claude_tools.py runs the
# installed CLI and fails when either changes: then update both here).
CLAUDE_CODE_VERSION = "2.1.197"
CLAUDE_CODE_TOOLS: tuple[str, ...] = (
    "Agent",
    "Bash",
    "CronCreate",
    "CronDelete",
    "CronList",
    "Edit",
    "EnterWorktree",
    "ExitWorktree",
    "Glob",
    "Grep",
    "NotebookEdit",
    "Read",
    "ReportFindings",
    "ScheduleWakeup",
    "SendMessage",
    "Skill",
    "TaskCreate",
    "TaskGet",
    "TaskList",
    "TaskOutput",
    "TaskStop",
    "TaskUpdate",
    "WebFetch",
    "WebSearch",
    "Workflow",
    "Write",
)

# old name -> the name the installed Claude Code uses (it accepts the old ones in --tools
# too; its stream-json ``init`` event still lists the sub-agent tool as ``Task``, while the
# API tool definitions and the PreToolUse hook's ``tool_name`` say ``Agent``)
TOOL_ALIASES: dict[str, str] = {
    "Task": "Agent",
    "BashOutput": "TaskOutput",
    "KillShell": "TaskStop",
    "KillBash": "TaskStop",
}

# characters that chain, substitute or redirect in a shell command: a prefix grant never
# covers a command containing one of them (``ls; cat /etc/shadow`` is not ``ls``)
SHELL_META = re.compile(r"[;&|`$<>()\n\r]")

_GRANT = re.compile(r"^(?P<tool>[A-Za-z][A-Za-z0-9_]*)(?:\((?P<rule>[^(),]+)\))?$")  # no comma: Claude Code splits --allowedTools on it


class Grant(NamedTuple):
    tool: str
    rule: str | None = None

    def __str__(self) -> str:
        return self.tool if self.rule is None else f"{self.tool}({self.rule})"


def canonical_tool(name: str) -> str:
    """The current name of a tool (``Task`` -> ``Agent``); other names unchanged."""
    return TOOL_ALIASES.get(name, name)


def is_mcp(name: str) -> bool:
    return name.startswith("mcp__")


def tool_exists(name: str) -> bool:
    """Whether the installed Claude Code offers built-in tool ``name`` (or its old name)."""
    return canonical_tool(name) in CLAUDE_CODE_TOOLS


def expand_grants(grants: list[str] | tuple[str, ...]) -> list[str]:
    """Grants made concrete, in order and without repeats: ``*`` becomes every tool of the
    installed Claude Code, old names their new ones (``Task`` -> ``Agent``), a rule
    (``Bash(ls:*)``) stays a rule, and a rule of a tool granted whole is dropped (the
    whole tool covers it). Built-in names the installed Claude Code does not offer are
    left out (they grant nothing); MCP names are kept as given."""
    parsed = [parse_grant(g) for g in grants]
    wanted: list[Grant] = []
    for grant in parsed:
        if grant.tool == "*":
            wanted.extend(Grant(t) for t in CLAUDE_CODE_TOOLS)
        elif is_mcp(grant.tool) or grant.tool in CLAUDE_CODE_TOOLS:
            wanted.append(grant)
    whole = {g.tool for g in wanted if g.rule is None}
    out: list[str] = []
    for grant in wanted:
        text = str(grant)
        if (grant.rule is None or grant.tool not in whole) and text not in out:
            out.append(text)
    return out


def grant_covers(grants: list[str] | tuple[str, ...], name: str) -> bool:
    """Whether ``grants`` cover ``name`` (a tool, a rule like ``Bash(ls:*)`` or an MCP
    name): ``*`` covers every tool, a whole tool every rule of it, ``mcp__x__*`` every
    matching MCP name; a rule covers only itself."""
    asked = parse_grant(name)
    for text in grants:
        grant = parse_grant(text)
        if grant.tool == "*" or grant == asked:
            return True
        if grant.rule is None and grant.tool == asked.tool:
            return True
        if is_mcp(grant.tool) and "*" in grant.tool and fnmatch.fnmatchcase(asked.tool, grant.tool):
            return True
    return False


def tool_names(grants: list[str] | tuple[str, ...]) -> list[str]:
    """The built-in tools that must exist for ``grants`` (``Bash(ls:*)`` -> ``Bash``):
    what Claude Code's ``--tools`` gets and the gateway lets through."""
    out: list[str] = []
    for text in expand_grants(grants):
        tool = parse_grant(text).tool
        if not is_mcp(tool) and tool not in out:
            out.append(tool)
    return out


def tool_offered(grants: list[str] | tuple[str, ...] | frozenset[str], name: str) -> bool:
    """Whether a tool definition or call named ``name`` (as Claude Code and the API name
    it) is within ``grants``: ``*``, a tool granted whole or by a rule (``Bash(ls:*)``
    offers ``Bash``; the command is Claude Code's to check), its old name, or an MCP name
    an MCP grant covers. Never raises on a hostile name."""
    if "*" in grants:
        return True
    tool = canonical_tool(name)
    if tool in tool_names(list(grants)):
        return True
    mcp = [g for g in grants if is_mcp(g)]
    return is_mcp(name) and any(g == name or ("*" in g and fnmatch.fnmatchcase(name, g)) for g in mcp)


def parse_grant(text: str) -> Grant:
    """``"Bash(ls:*)"`` -> ``Grant("Bash", "ls:*")``; the tool name is made canonical.
    MCP tool names (``mcp__server__tool``) and ``*`` are returned as bare grants.
    Raises ``ValueError`` naming the text when it is not a grant."""
    text = text.strip()
    if text == "*" or text.startswith("mcp__"):
        return Grant(text)
    m = _GRANT.match(text)
    if m is None:
        raise ValueError(f"{text!r} is not a tool name or a rule like 'Bash(ls:*)'")
    return Grant(canonical_tool(m["tool"]), m["rule"].strip() if m["rule"] else None)


def command_matches(rule: str, command: str) -> bool:
    """Whether a Bash command is covered by a rule: ``prefix:*`` (the command is the
    prefix or starts with it and a space), a glob with ``*``, or an exact command.
    A command with shell metacharacters is covered only by an exact rule."""
    command = command.strip()
    if rule.endswith(":*"):
        prefix = rule[:-2].strip()
        if SHELL_META.search(command):
            return False
        return command == prefix or command.startswith(prefix + " ")
    if "*" in rule:
        return not SHELL_META.search(command) and fnmatch.fnmatchcase(command, rule)
    return command == rule.strip()
