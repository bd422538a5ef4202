"""Agent and skill sources for the catalog tests."""

from __future__ import annotations

from pathlib import Path

AGENT = """---
name: {name}
description: Extracts the workflow steps from meeting notes
tools: Read, Write
model: inherit
---
You are the {name} agent. {marker}
"""

SKILL = """---
name: {name}
description: How to turn meeting notes into a workflow file
---
{marker} Use the template in template.md.
"""


def write_agent(folder: Path, name: str = "scribe", marker: str = "SCRIBE-PROMPT") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.md"
    path.write_text(AGENT.format(name=name, marker=marker))
    return path


def write_skill(folder: Path, name: str = "notes-kit", marker: str = "NOTES-KIT-BODY") -> Path:
    skill = folder / name
    (skill / "templates").mkdir(parents=True, exist_ok=True)
    (skill / "SKILL.md").write_text(SKILL.format(name=name, marker=marker))
    (skill / "templates" / "template.md").write_text("# Workflow\n1. step\n")
    return skill
