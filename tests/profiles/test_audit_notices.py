"""Key, profile and budget changes are announced on ``<prefix>.audit.<kind>``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from typer.testing import CliRunner

from bus import Bus, Settings, decode_notice, free_port
from cli import app
from profiles import NoticeBuffer, Store, publish_notices


async def _notices(bus: Bus, count: int, *, timeout: float = 10.0) -> list:
    sub = await bus.js.pull_subscribe(bus.subjects.audit_all(), stream=bus.subjects.audit_stream)
    got: list = []
    async with asyncio.timeout(timeout):
        while len(got) < count:
            try:
                msgs = await sub.fetch(count - len(got), timeout=1)
            except TimeoutError:
                continue
            for msg in msgs:
                await msg.ack()
                got.append((msg.subject, decode_notice(msg.data)))
    await sub.unsubscribe()
    return got


async def test_store_changes_become_audit_notices_on_the_bus(settings: Settings, bus: Bus):
    buffer = NoticeBuffer()
    async with Store.for_settings(settings, actor="cli:alice", notify=buffer) as store:
        plaintext, key = await store.create_key("developer", name="ci")
        await store.update_profile("developer", max_concurrent=3)
        await store.set_budget(key_id=key.prefix, day_usd=2.0)
        _, new = await store.rotate(key.prefix, grace_s=60)
        await store.revoke(new.prefix)
        await store.delete_profile("complete-only")
    assert await publish_notices(settings, buffer.notices) is None

    got = await _notices(bus, 6)

    kinds = [notice.kind for _, notice in got]
    assert kinds == ["key_created", "profile_changed", "budget_changed", "key_rotated", "key_revoked", "profile_deleted"]
    assert [subject for subject, _ in got] == [bus.subjects.audit(kind) for kind in kinds]
    assert all(notice.actor == "cli:alice" for _, notice in got)
    assert got[0][1].detail["prefix"] == key.prefix
    assert got[1][1].detail["changes"] == {"max_concurrent": [4, 3]}
    assert got[3][1].detail["new_prefix"] == new.prefix
    assert plaintext not in json.dumps([n.detail for _, n in got])


async def test_the_cli_publishes_its_changes_and_never_the_key(settings: Settings, bus: Bus):
    env = {
        "TASKBUS_DATA_DIR": settings.data_dir,
        "TASKBUS_NATS_URL": settings.nats_url,
        "TASKBUS_SUBJECT_PREFIX": settings.subject_prefix,
        "TASKBUS_CONFIG": None,
    }
    result = await asyncio.to_thread(CliRunner().invoke, app, ["keys", "create", "--profile", "developer", "--json"], env=env)
    assert result.exit_code == 0, result.output
    created = json.loads(result.stdout)

    [(subject, notice)] = await _notices(bus, 1)

    assert subject == bus.subjects.audit("key_created")
    assert notice.detail["prefix"] == created["prefix"] and notice.actor.startswith("cli:")
    assert created["key"] not in json.dumps(notice.detail)


async def test_an_unreachable_nats_refuses_the_change_with_one_error_line(tmp_path: Path):
    """NATS holds the keys now: without it nothing can be created, and the CLI says so."""
    env = {"TASKBUS_DATA_DIR": str(tmp_path / "d"), "TASKBUS_NATS_URL": f"nats://127.0.0.1:{free_port()}", "TASKBUS_CONFIG": None}

    result = await asyncio.to_thread(CliRunner().invoke, app, ["keys", "create", "--profile", "developer", "--json"], env=env)

    assert result.exit_code == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: cannot connect to NATS"), result.stderr
    assert result.stdout == ""
