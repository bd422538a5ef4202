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

# old name -> the name the installed Claude Code uses
TOOL_ALIASES: dict[str, str] = {"Task": "Agent"}

# characters that chain, substitute or redirect in a shell command: a prefix grant never
# covers a command containing one of them (``ls; cat /etc/shadow`` is not ``ls``)
SHELL_META = re.compile(r"[;&|`$<>()\n\r]")

_GRANT = re.compile(r"^(?P<tool>[A-Za-z][A-Za-z0-9_]*)(?:\((?P<rule>[^()]+)\))?$")


class Grant(NamedTuple):
    tool: str
    rule: str | None = None

    def __str__(self) -> str:
        return self.tool if self.rule is None else f"{self.tool}({self.rule})"


def canonical_tool(name: str) -> str:
    """The current name of a tool (``Task`` -> ``Agent``); other names unchanged."""
    return TOOL_ALIASES.get(name, name)


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
