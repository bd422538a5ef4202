"""``taskbus agents|skills add|list|show|rm`` against the real JetStream catalog."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from catalog_kit import write_agent, write_skill

from bus import Bus, Catalog, CatalogLimits, InvalidInput, Subjects, decode_notice, make_bundle
from bus._messages import CatalogBundle, CatalogFile


def audit_notices(nats_url: str, subjects: Subjects) -> list:
    async def go() -> list:
        async with await Bus.open(nats_url, subjects, name="pytest-audit") as bus:
            info = await bus.js.stream_info(subjects.audit_stream)
            out = []
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                msg = await bus.js.get_msg(subjects.audit_stream, seq)
                out.append(decode_notice(msg.data))
            return out

    return asyncio.run(go())


def test_an_agent_is_added_listed_shown_replaced_and_removed_and_each_change_is_audited(cli, tmp_path, nats_url, subjects):
    source = write_agent(tmp_path / "src")
    added = cli.json("agents", "add", str(source))
    assert [(a["action"], a["name"]) for a in added] == [("added", "scribe")]
    first = added[0]["sha256"]
    assert first and added[0]["tools"] == ["Read", "Write"] and added[0]["files"] == ["scribe.md"]

    listed = cli.json("agents", "list")
    assert [(e["name"], e["sha256"], e["description"]) for e in listed] == [
        ("scribe", first, "Extracts the workflow steps from meeting notes")
    ]
    assert cli.json("skills", "list") == []
    assert "unchanged" in cli("agents", "add", str(source)).stdout

    write_agent(tmp_path / "src", marker="A NEW PROMPT")
    replaced = cli("agents", "add", str(source)).stdout
    assert "replaced agent scribe" in replaced and first[:12] in replaced
    shown = cli.json("agents", "show", "scribe")
    assert "A NEW PROMPT" in shown["content"] and shown["sha256"] != first

    assert "running tasks keep" in cli("agents", "rm", "scribe").stdout
    assert cli.json("agents", "list") == []
    gone = cli("agents", "show", "scribe", ok=False)
    assert gone.exit_code == 1 and "no agent 'scribe' in the catalog" in gone.output

    notices = [n for n in audit_notices(nats_url, subjects) if n.kind.startswith("catalog_")]
    assert [(n.kind, n.detail["name"]) for n in notices] == [
        ("catalog_added", "scribe"),
        ("catalog_replaced", "scribe"),
        ("catalog_removed", "scribe"),
    ]
    assert notices[1].detail["previous_sha256"] == first and notices[0].actor.startswith("cli:")


def test_a_skill_folder_is_stored_with_its_resources_and_a_folder_of_agents_adds_each(cli, tmp_path):
    skill = write_skill(tmp_path)
    added = cli.json("skills", "add", str(skill))
    assert added[0]["name"] == "notes-kit" and added[0]["files"] == ["SKILL.md", "templates/template.md"]
    assert cli.json("skills", "show", "notes-kit")["content"].startswith("---\nname: notes-kit")

    folder = tmp_path / "agents"
    write_agent(folder, "scribe")
    write_agent(folder, "reviewer")
    assert sorted(a["name"] for a in cli.json("agents", "add", str(folder))) == ["reviewer", "scribe"]


def _refused(cli, kind: str, path: Path, words: str) -> None:
    result = cli(f"{kind}s", "add", str(path), ok=False)
    assert result.exit_code == 1, result.output
    assert words in result.output and "nothing was stored" in result.output
    assert cli.json("agents", "list") == [] and cli.json("skills", "list") == []


def test_hostile_skill_folders_are_refused_and_nothing_is_stored(cli, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("host secret")

    linked = write_skill(tmp_path / "a")
    (linked / "leak.txt").symlink_to(secret)
    _refused(cli, "skill", linked, "a symbolic link")

    dir_link = write_skill(tmp_path / "b")
    (dir_link / "up").symlink_to(tmp_path)
    _refused(cli, "skill", dir_link, "a symbolic link")

    fifo = write_skill(tmp_path / "c")
    os.mkfifo(fifo / "pipe")
    _refused(cli, "skill", fifo, "not a regular file")

    big = write_skill(tmp_path / "d")
    (big / "huge.bin").write_bytes(b"x" * (CatalogLimits().max_file_bytes + 1))
    _refused(cli, "skill", big, "over the limit")

    many = write_skill(tmp_path / "e")
    for i in range(CatalogLimits().max_files):
        (many / f"f{i}.txt").write_text("x")
    _refused(cli, "skill", many, "TASKBUS_CATALOG_MAX_FILES")

    no_skill = tmp_path / "f" / "empty"
    no_skill.mkdir(parents=True)
    (no_skill / "README.md").write_text("hi")
    _refused(cli, "skill", no_skill, "no SKILL.md")

    outside = write_skill(tmp_path / "g")
    link_to_skill = tmp_path / "g-link"
    link_to_skill.symlink_to(outside)
    _refused(cli, "skill", link_to_skill, "symbolic link")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("no frontmatter at all\n", "must start with a '---'"),
        ("---\nname: scribe\ndescription: x\n", "no closing '---'"),
        ("---\nname: scribe\ndescription: |\n  multi\n---\nbody\n", "one-line text value"),
        ("---\nname: Scribe_Agent\ndescription: x\n---\nbody\n", "is not allowed: use 1-64 lowercase"),
        ("---\nname: ../../etc\ndescription: x\n---\nbody\n", "is not allowed"),
        ("---\nname: scribe\n---\nbody\n", "non-empty 'description'"),
        ("---\nname: scribe\ndescription: x\nhooks: rm -rf /\n---\nbody\n", "'hooks' is not supported"),
        ("---\nname: scribe\ndescription: x\ntools: Bash; curl evil\n---\nbody\n", "is not a tool name"),
        ("---\nname: scribe\ndescription: x\n---\n\n", "no system prompt"),
        ("---\nname: general-purpose\ndescription: x\n---\nbody\n", "reserved by Claude Code"),
        ("---\nname: scribe\nname: other\ndescription: x\n---\nbody\n", "appears twice"),
    ],
)
def test_bad_agent_frontmatter_is_refused_with_a_clear_error(cli, tmp_path, text, words):
    path = tmp_path / "agent.md"
    path.write_bytes(text.encode())
    _refused(cli, "agent", path, words)


def test_bad_utf8_and_symlinked_agent_files_are_refused(cli, tmp_path):
    bad = tmp_path / "bad.md"
    bad.write_bytes(b"---\nname: scribe\ndescription: \xff\n---\nbody\n")
    _refused(cli, "agent", bad, "not UTF-8")
    link = tmp_path / "link.md"
    link.symlink_to(write_agent(tmp_path / "real"))
    _refused(cli, "agent", link, "symbolic link")


async def test_a_bundle_with_path_traversal_is_refused_by_the_store_itself(bus):
    """What a hand-made client (not the CLI) could send: validation sits in Catalog.put."""
    catalog = await Catalog.open(bus.js, bus.subjects.catalog_bucket)
    skill = b"---\nname: kit\ndescription: d\n---\nbody\n"
    for path in ("../escape.txt", "/etc/passwd", "a/../../b", "./x", "a//b", "~/x"):
        bundle = CatalogBundle(
            kind="skill",
            name="kit",
            files=sorted([CatalogFile(path="SKILL.md", data=skill), CatalogFile(path=path, data=b"x")], key=lambda f: f.path),
        )
        with pytest.raises(InvalidInput, match="is not allowed"):
            await catalog.put(bundle, limits=CatalogLimits(), actor="test")
    with pytest.raises(InvalidInput, match="both a file and a folder"):
        await catalog.put(make_bundle("skill", "kit", {"SKILL.md": skill, "a": b"1", "a/b": b"2"}), limits=CatalogLimits(), actor="t")
    assert await catalog.entries() == []
    info = await bus.js.stream_info(f"OBJ_{bus.subjects.catalog_bucket}")
    assert info.state.messages == 0


async def test_a_runner_fetch_refuses_content_that_does_not_match_its_hash(bus):
    catalog = await Catalog.open(bus.js, bus.subjects.catalog_bucket)
    entry, _ = await catalog.put(
        make_bundle("skill", "kit", {"SKILL.md": b"---\nname: kit\ndescription: d\n---\nbody\n"}), limits=CatalogLimits(), actor="t"
    )
    fetched = await catalog.fetch(entry.ref())
    assert fetched.files[0].data.endswith(b"body\n")
    objects = await bus.js.object_store(bus.subjects.catalog_bucket)
    await objects.put(entry.sha256, b"tampered")
    from bus import BusError

    with pytest.raises(BusError, match="does not match its hash"):
        await catalog.fetch(entry.ref())
