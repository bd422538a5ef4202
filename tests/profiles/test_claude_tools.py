"""The pinned tool list (bus.CLAUDE_CODE_TOOLS) is what the installed Claude Code offers.

Runs the real CLI against the scripted model (outside a sandbox: only its tool list is
read). When this fails after a Claude Code upgrade, update ``CLAUDE_CODE_VERSION``,
``CLAUDE_CODE_TOOLS`` and ``TOOL_ALIASES`` in bus/_toolnames.py from what it reports."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path

import pytest

from bus import CLAUDE_CODE_TOOLS, CLAUDE_CODE_VERSION, TOOL_ALIASES, canonical_tool
from sandbox import ScriptedModelServer

pytestmark = pytest.mark.usefixtures("require_claude")


async def init_and_api_tools(claude: Path, tmp_path: Path, *flags: str) -> tuple[list[str], list[str]]:
    """(the init event's tools, the tools of the CLI's first Messages API request)."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    async with ScriptedModelServer(log_path=tmp_path / "model.jsonl") as model:
        env = {
            "PATH": os.environ["PATH"],
            "HOME": str(home),
            "ANTHROPIC_BASE_URL": model.url,
            "ANTHROPIC_API_KEY": "scripted",
            "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
            "DISABLE_AUTOUPDATER": "1",
        }
        proc = await asyncio.create_subprocess_exec(
            str(claude),
            "-p",
            "--output-format=stream-json",
            "--verbose",
            "--model=claude-sonnet-4-6",
            "--max-turns=1",
            "--strict-mcp-config",
            "--no-session-persistence",
            "--setting-sources=",
            *flags,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
            cwd=str(tmp_path),
        )
        out, err = await asyncio.wait_for(proc.communicate(b"hello"), 180)
        requests = [r for r in model.requests() if r.get("path") == "/v1/messages"]
    init = [d for d in map(json.loads, out.decode().splitlines()) if d.get("type") == "system" and d.get("subtype") == "init"]
    assert len(init) == 1 and requests, err.decode()[-2000:]
    return init[0]["tools"], requests[0]["tools"]


def test_the_installed_claude_code_is_the_pinned_version(require_claude: Path) -> None:
    version = subprocess.run([str(require_claude), "--version"], capture_output=True, text=True, timeout=60).stdout
    assert version.split()[0] == CLAUDE_CODE_VERSION, f"update bus/_toolnames.py for Claude Code {version}"


async def test_every_pinned_tool_exists_and_nothing_else_is_offered(require_claude: Path, tmp_path: Path) -> None:
    init, api = await init_and_api_tools(require_claude, tmp_path, "--tools=" + ",".join(CLAUDE_CODE_TOOLS))
    assert sorted(canonical_tool(t) for t in init) == sorted(CLAUDE_CODE_TOOLS)
    assert sorted(api) == sorted(CLAUDE_CODE_TOOLS)  # the API names the sub-agent tool Agent
    assert "Task" in init and "Agent" not in init  # while the init event still says Task


async def test_its_default_tools_are_within_the_pinned_list(require_claude: Path, tmp_path: Path) -> None:
    init, api = await init_and_api_tools(require_claude, tmp_path)
    assert {canonical_tool(t) for t in init} <= set(CLAUDE_CODE_TOOLS)
    assert set(api) <= set(CLAUDE_CODE_TOOLS)


async def test_it_accepts_the_old_names_as_the_new_ones(require_claude: Path, tmp_path: Path) -> None:
    _init, api = await init_and_api_tools(require_claude, tmp_path, "--tools=" + ",".join(TOOL_ALIASES))
    assert sorted(api) == sorted(set(TOOL_ALIASES.values()))


async def test_a_name_it_does_not_know_gives_no_tool(require_claude: Path, tmp_path: Path) -> None:
    _init, api = await init_and_api_tools(require_claude, tmp_path, "--tools=MultiEdit,TodoWrite,LS")
    assert api == []
