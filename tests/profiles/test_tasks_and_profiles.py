"""The task registry, profile validation, and opening one fresh file from many connections."""

from __future__ import annotations

import asyncio

import pytest

from bus import InvalidInput, NotFound
from profiles import Profile, Store, parse_profiles_toml


async def test_a_task_is_recorded_updated_once_finished_and_listed_newest_first(store: Store, clock):
    await store.record_task("t1", "tb_AbCd1234", "developer", "task", 2.0, model="claude-haiku-4-5")
    clock.advance(1)
    await store.record_task("t2", "tb_AbCd1234", "developer", "complete", 0.1)
    await store.record_task("t3", "tb_Other123", "developer", "task", 1.0)
    again = await store.record_task("t1", "tb_AbCd1234", "developer", "task", 9.0)
    assert again.reserved_usd == 2.0

    await store.update_task("t1", "running")
    done = await store.update_task("t1", "succeeded", cost=0.42, result_summary="x" * 2000)
    late = await store.update_task("t1", "failed", error_code="runner_lost")

    assert done.status == late.status == "succeeded" and late.error_code is None
    assert done.cost_usd == 0.42 and len(done.result_summary) == 500 and done.finished_at is not None
    assert [t.task_id for t in await store.list_tasks("tb_AbCd1234")] == ["t2", "t1"]
    assert [t.task_id for t in await store.list_tasks("tb_AbCd1234", status="succeeded")] == ["t1"]
    assert len(await store.list_tasks(limit=2)) == 2
    with pytest.raises(NotFound):
        await store.get_task("nope")
    with pytest.raises(InvalidInput, match="task status 'done'"):
        await store.update_task("t2", "done")


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[profiles.a]\ntools = ["Read", "Read"]', "lists 'Read' twice"),
        ('[profiles.a]\ntools = ["Bash(git:*)", "mcp__github__*", "mcp__slack__post", "*"]', None),
        ('[profiles.a]\ntools = ["Frobnicate(x)"]', "unknown tool 'Frobnicate(x)'"),
        ('[profiles.a]\nproject_roots = ["/srv"]', "fs_access is 'none'"),
        ('[profiles.a]\nfs_access = "readonly"\nproject_roots = ["srv"]', "not an absolute path"),
        ("[profiles.a]\nkinds = []", "kinds is empty"),
        ('[profiles.a]\nkinds = ["chat"]', "kinds"),
        ('[profiles.a]\nagents = ["bad agent"]', "agent name 'bad agent' is not valid"),
        ('[profiles."Upper"]\n', "profile name 'Upper' is not valid"),
        ("title = 'x'", "expected a table"),
        ("", "no profiles found"),
    ],
)
def test_profile_files_are_validated_field_by_field(toml: str, message: str | None):
    if message is None:
        assert isinstance(parse_profiles_toml(toml)["a"], Profile)
        return
    with pytest.raises(InvalidInput) as refused:
        parse_profiles_toml(toml)
    assert message in refused.value.message


async def test_many_stores_opening_a_fresh_control_plane_at_once_seed_it_once(settings):
    stores = [Store.for_settings(settings) for _ in range(8)]  # eight servers' NATS connections
    await asyncio.gather(*(s.connect() for s in stores))
    try:
        names = [sorted(p.name for p in await s.list_profiles()) for s in stores]
    finally:
        for s in stores:
            await s.close()
    assert names == [["admin", "complete-only", "developer", "readonly-analyst"]] * 8


async def test_a_profile_with_working_keys_cannot_be_deleted(store: Store):
    _, key = await store.create_key("developer")
    with pytest.raises(InvalidInput, match=f"used by 1 active key\\(s\\) \\({key.prefix}\\)"):
        await store.delete_profile("developer")
    await store.revoke(key.prefix)
    await store.delete_profile("developer")
    with pytest.raises(NotFound):
        await store.get_profile("developer")
