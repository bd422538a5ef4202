"""The catalog folders in a sandbox: read-only binds at ~/.claude/agents and
~/.claude/skills that the agent (which owns its home) can neither change, remove,
chmod nor rename away, on bwrap, a cold Docker container and a warm-pool one."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from bus import InvalidInput, Settings
from sandbox._sandboxes import SandboxSpec, get_backend

FILES = {
    "agents/scribe.md": b"---\nname: scribe\ndescription: d\n---\n[script:scribe-work] the registered prompt\n",
    "skills/notes-kit/SKILL.md": b"---\nname: notes-kit\ndescription: d\n---\nthe registered skill\n",
    "skills/notes-kit/templates/template.md": b"# Workflow\n",
}
TARGETS = ["/home/agent/.claude/agents/scribe.md", "/home/agent/.claude/skills/notes-kit/SKILL.md"]

# Every attempt prints a lower-case "refused-..." line when it fails, an upper-case one when it worked.
ATTACK = r"""
for f in "$@"; do
  (echo planted > "$f") 2>/dev/null && echo "WROTE $f" || echo refused-write
  rm -f "$f" 2>/dev/null; [ -e "$f" ] && echo refused-rm || echo "REMOVED $f"
  chmod 666 "$f" 2>/dev/null && echo "CHMODDED $f" || echo refused-chmod
  mv "$f" "$f.x" 2>/dev/null && echo "MOVED $f" || echo refused-mv
done
rm -rf ~/.claude/skills/notes-kit 2>/dev/null; [ -e ~/.claude/skills/notes-kit/SKILL.md ] && echo refused-rm-skill || echo REMOVED-SKILL
for d in agents skills; do
  mv ~/.claude/$d ~/$d.old 2>/dev/null && echo "MOVED $d" || echo refused-mv-dir
  rmdir ~/.claude/$d 2>/dev/null && echo "RMDIR $d" || echo refused-rmdir
done
mv ~/.claude ~/claude.old 2>/dev/null && echo MOVED-CLAUDE || echo refused-mv-claude
rm -rf ~/.claude 2>/dev/null; [ -e ~/.claude/agents/scribe.md ] && echo refused-rm-claude || echo REMOVED-CLAUDE
(echo x > ~/.claude/agents/evil.md) 2>/dev/null && echo PLANTED || echo refused-plant
echo notes > ~/.claude/notes.txt && echo claude-dir-writable
"""
REFUSED = (
    ["refused-write", "refused-rm", "refused-chmod", "refused-mv"] * 2
    + ["refused-rm-skill"]
    + ["refused-mv-dir", "refused-rmdir"] * 2
    + ["refused-mv-claude", "refused-rm-claude", "refused-plant", "claude-dir-writable"]
)


def spec_for(tmp_path: Path, task_id: str, **fields) -> SandboxSpec:  # type: ignore[no-untyped-def]
    ws = tmp_path / task_id
    ws.mkdir()
    return SandboxSpec(task_id=task_id, runner_id="catalog-mounts", workspace=str(ws), memory_mb=256, pids=64, disk_mb=32, **fields)


async def attack_and_read(sb) -> tuple[list[str], str]:  # type: ignore[no-untyped-def]
    attack = await (await sb.exec(["bash", "-c", ATTACK, "attack", *TARGETS])).collect(timeout=60)
    listing = await (
        await sb.exec(
            [
                "bash",
                "-c",
                "cd ~/.claude && find agents skills -type f | sort | xargs cat; "
                "stat -c '%u %a %n' agents/scribe.md skills skills/notes-kit; id -u",
            ]
        )
    ).collect(timeout=30)
    return attack.stdout, "\n".join(listing.stdout)


@pytest.mark.parametrize("mode", ["bwrap", "docker", "docker-pooled"])
async def test_installed_agents_and_skills_cannot_be_changed_removed_or_renamed_away(
    runner_settings: Settings, tmp_path: Path, mode: str, request: pytest.FixtureRequest
) -> None:
    request.getfixturevalue("require_bwrap" if mode == "bwrap" else "require_docker")
    settings = msgspec.structs.replace(runner_settings, docker_warm_pool=1 if mode == "docker-pooled" else 0)
    backend = get_backend(mode.split("-")[0], settings)
    spec = spec_for(tmp_path, "t-catalog", catalog_files=FILES)
    try:
        if mode == "docker-pooled":
            assert await backend.prewarm(spec_for(tmp_path, "t-warm"), timeout=120) == 1  # empty catalog folders
            pooled = {i.id for i in await backend.list() if i.state == "pooled"}
        sb = await backend.create(spec)
        try:
            if mode == "docker-pooled":
                assert sb.id in pooled  # the pre-created container took the task's catalog
            attack, listing = await attack_and_read(sb)
        finally:
            await sb.destroy()
    finally:
        await backend.close()
    assert attack == REFUSED, attack
    expected = b"".join(FILES[k] for k in sorted(FILES)).decode().rstrip("\n").splitlines()
    lines = listing.splitlines()
    assert lines[: len(expected)] == expected  # the registered text, unchanged
    assert lines[len(expected) :] == ["0 444 agents/scribe.md", "0 555 skills", "0 555 skills/notes-kit", "1000"]


async def test_a_sandbox_without_catalog_entries_has_empty_read_only_catalog_folders(
    runner_settings: Settings, tmp_path: Path, require_bwrap: None
) -> None:
    backend = get_backend("bwrap", runner_settings)
    sb = await backend.create(spec_for(tmp_path, "t-empty"))
    try:
        result = await (
            await sb.exec(["bash", "-c", "ls -A ~/.claude/agents ~/.claude/skills; touch ~/.claude/agents/x.md || echo refused"])
        ).collect(timeout=30)
    finally:
        await sb.destroy()
        await backend.close()
    assert result.stdout[-1] == "refused" and "x.md" not in "\n".join(result.stdout)


def test_catalog_files_outside_agents_and_skills_or_home_files_inside_them_are_refused(tmp_path: Path) -> None:
    for bad in ("settings.json", "agents", "../agents/x.md", "skills/../../x"):
        with pytest.raises(InvalidInput):
            spec_for(tmp_path, f"t-{len(list(tmp_path.iterdir()))}", catalog_files={bad: b""})
    with pytest.raises(InvalidInput, match="read-only catalog folder"):
        spec_for(tmp_path, "t-home", home_files={".claude/agents/x.md": b""})
