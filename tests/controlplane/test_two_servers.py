"""The control plane shared by servers: two ``profiles.Store``s, each on its own NATS
connection (as two ``taskbus serve`` processes would be), on one real nats-server."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import msgspec
import nats
import nats.errors
import pytest

from bus import (
    AuthError,
    BudgetExceeded,
    EmbeddedNats,
    KeyRevoked,
    NotFound,
    Settings,
    Subjects,
    connect_options,
)
from bus._natsauth import ROLES, credentials_path, server_authorization
from profiles import Store, profile_from_mapping


@pytest.fixture
async def two(settings: Settings) -> AsyncIterator[tuple[Store, Store]]:
    async with Store.for_settings(settings, actor="server-a") as a, Store.for_settings(settings, actor="server-b") as b:
        yield a, b


async def _until(what: str, check: Any, timeout: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}")
        await asyncio.sleep(0.005)


async def test_fifty_reservations_across_two_servers_never_overshoot_one_keys_budget(two: tuple[Store, Store]) -> None:
    a, b = two
    await a.create_profile(
        profile_from_mapping(
            "race", {"models": ["claude-haiku-4-5"], "budget_day_usd": 7.0, "budget_month_usd": 50.0, "max_concurrent": 100}
        )
    )
    _, key = await a.create_key("race")
    await _until("server b's view of the key", lambda: key.prefix in b.view.keys)

    results = await asyncio.gather(
        *((a if i % 2 else b).admit(key.prefix, f"t_race{i:02d}", 1.0, profile="race", kind="complete") for i in range(50)),
        return_exceptions=True,
    )

    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BaseException)]
    assert len(admitted) == 7
    assert all(isinstance(r, BudgetExceeded) for r in refused), refused
    assert all("daily budget" in r.message and "$7.00" in r.message for r in refused)
    for store in (a, b):
        status = await store.remaining_budget(key.prefix)
        assert status.day.used_usd == pytest.approx(7.0) and status.running == 7
    assert len(await b.list_tasks(key.prefix, limit=100)) == 7

    # settling through the other server frees what was not spent, for both
    for i, reservation in enumerate(admitted):
        await (b if i % 2 else a).finish_task(reservation.task_id, 0.25, "succeeded")
    assert (await a.remaining_budget(key.prefix)).day.used_usd == pytest.approx(7 * 0.25)
    assert (await b.remaining_budget(key.prefix)).running == 0


async def test_a_key_revoked_through_one_server_is_refused_by_the_other_at_its_next_call(
    two: tuple[Store, Store],
) -> None:
    a, b = two
    plaintext, key = await a.create_key("developer")
    await _until("server b's view of the key", lambda: key.prefix in b.view.keys)
    assert (await b.authenticate(plaintext)).prefix == key.prefix

    await a.revoke(key.prefix)

    # admission reads the key's stored record in the same round trip as the rate window:
    # refused at once, even if b's watch had not delivered the revoke yet
    with pytest.raises(KeyRevoked):
        await b.begin_request(key.prefix, "developer")
    await _until("server b's view of the revoke", lambda: b.view.keys[key.prefix].record.revoked_at is not None)
    with pytest.raises(KeyRevoked):
        await b.authenticate(plaintext)


async def test_a_task_recorded_by_one_server_is_read_and_finished_through_the_other(two: tuple[Store, Store]) -> None:
    a, b = two
    _, key = await a.create_key("developer")
    await _until("server b's view of the key", lambda: key.prefix in b.view.keys)
    await a.admit(key.prefix, "t_shared", 0.5, profile="developer", kind="task", model="claude-haiku-4-5")

    seen = await b.get_task("t_shared")
    assert seen.key_id == key.prefix and seen.status == "accepted" and seen.reserved_usd == 0.5
    assert [t.task_id for t in await b.list_tasks(None, status="accepted")] == ["t_shared"]

    await b.update_task("t_shared", "running")
    done = await b.finish_task("t_shared", 0.1, "succeeded", result_summary="ok")

    assert done.status == "succeeded" and (await a.get_task("t_shared")).cost_usd == 0.1
    assert await a.list_tasks(None, status="running") == [] and await a.list_tasks(None, status="accepted") == []
    assert (await a.get_reservation("t_shared")).state == "settled"  # type: ignore[union-attr]
    with pytest.raises(NotFound):
        await b.get_task("t_nonesuch")


async def test_a_profile_change_through_one_server_applies_to_the_others_next_call(two: tuple[Store, Store]) -> None:
    a, b = two
    await a.update_profile("developer", rate_limit_per_min=2)
    await _until("server b's view of the profile", lambda: b.view.profiles["developer"].rate_limit_per_min == 2)
    _, key = await b.create_key("developer")
    await a.check_rate(key.prefix)
    await b.check_rate(key.prefix)
    with pytest.raises(Exception, match="allows 2 per minute"):
        await a.check_rate(key.prefix)


async def test_a_key_created_through_one_server_works_at_once_on_the_other(two: tuple[Store, Store]) -> None:
    a, b = two
    await a.view.stop()  # as if a's watcher lagged behind: the new keys never reach its view by watch
    for _ in range(3):
        plaintext, key = await b.create_key("developer")
        assert (await a.authenticate(plaintext)).prefix == key.prefix
        assert (await a.get_key(key.prefix)).profile == "developer"
    with pytest.raises(AuthError, match="unknown API key"):
        await a.authenticate(plaintext[:-1] + ("A" if plaintext[-1] != "A" else "B"))


async def test_an_unknown_key_is_refused_by_every_server(two: tuple[Store, Store]) -> None:
    for store in two:
        with pytest.raises(AuthError, match="unknown API key"):
            await store.authenticate("tb_" + "A" * 43)


# --------------------------------------------------------------------------- who may touch the buckets


@pytest.fixture
async def secured(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    data = tmp_path / "data"
    prefix = "c" + uuid.uuid4().hex[:8]
    async with EmbeddedNats(data / "nats", authorization=server_authorization(data, prefix)) as server:
        base = Settings.load({}, data_dir=str(data), nats_url=server.url, subject_prefix=prefix)
        yield {
            "url": server.url,
            "subjects": Subjects(prefix),
            "as": {r: msgspec.structs.replace(base, nats_credentials=str(credentials_path(data, r))) for r in ROLES},
        }


async def _refused_bucket_access(url: str, settings: Settings, s: Subjects, prefix: str) -> list[str]:
    """Read and write the control-plane buckets as ``settings``' user; the server's error reports."""
    errors: list[str] = []

    async def on_error(exc: Exception) -> None:
        errors.append(str(exc))

    nc = await nats.connect(url, error_cb=on_error, allow_reconnect=False, **connect_options(settings))
    try:
        js = nc.jetstream(timeout=2)
        with pytest.raises(nats.errors.TimeoutError):  # no reply: the request is refused by the server
            await js.get_msg(f"KV_{s.control_bucket}", subject=f"$KV.{s.control_bucket}.key.{prefix}", direct=True)
        with pytest.raises(nats.errors.TimeoutError):
            await js.stream_info(f"KV_{s.ledger_bucket}")
        await nc.publish(f"$KV.{s.control_bucket}.key.tb_forged00", b'{"forged": true}')
        await nc.publish(f"$KV.{s.tasks_bucket}.t.t_forged", b"{}")
        await nc.flush()
        await _until("the permission errors", lambda: len(errors) >= 4)
    finally:
        await nc.close()
    return errors


async def test_the_cli_user_manages_keys_and_the_runner_user_cannot_read_or_write_them(secured: dict[str, Any]) -> None:
    s: Subjects = secured["subjects"]
    async with Store.for_settings(secured["as"]["server"]) as server_store:  # the server creates the buckets
        async with Store.for_settings(secured["as"]["cli"]) as cli_store:  # the operator's commands work
            _, key = await cli_store.create_key("developer")
            assert (await cli_store.remaining_budget(key.prefix)).profile == "developer"
            await _until("the server's view of the key", lambda: key.prefix in server_store.view.keys)
            await server_store.admit(key.prefix, "t_listed", 0.01, profile="developer", kind="complete")
            # `taskbus tasks list` / `tasks get` as the operator (the listing reads the index backwards)
            assert [t.task_id for t in await cli_store.list_tasks(key.prefix)] == ["t_listed"]
            assert [t.task_id for t in await cli_store.list_tasks(None, status="accepted")] == ["t_listed"]
            assert (await cli_store.get_task("t_listed")).status == "accepted"

        for role in ("runner", "audit"):
            errors = await _refused_bucket_access(secured["url"], secured["as"][role], s, key.prefix)
            assert all("permissions violation" in e.lower() for e in errors), errors
        assert "tb_forged00" not in server_store.view.keys
        with pytest.raises(NotFound):
            await server_store.get_task("t_forged")


async def test_the_ledger_entries_stay_small_as_the_history_grows(two: tuple[Store, Store]) -> None:
    """200 tasks through one key: the account's entry and the key's rate window hold the
    current periods and what is open, never the history; the registry lists by key."""
    a, b = two
    _, key = await a.create_key("developer")
    _, other = await a.create_key("developer")
    await _until("server b's view of the keys", lambda: other.prefix in b.view.keys)
    await a.update_profile("developer", max_concurrent=1000, rate_limit_per_min=100_000)
    await _until("server b's view of the profile", lambda: b.view.profiles["developer"].max_concurrent == 1000)
    for i in range(200):
        store = a if i % 2 else b
        await store.begin_request(key.prefix, "developer")
        await store.admit(key.prefix, f"t_hist{i:03d}", 0.01, profile="developer", kind="complete")
        await (b if i % 2 else a).finish_task(f"t_hist{i:03d}", 0.001, "succeeded")
    await a.admit(other.prefix, "t_other", 0.01, profile="developer", kind="complete")

    account = await a.ledger.kv.get(f"a.{key.account}")
    rate = await a.ledger.kv.get(f"r.{key.prefix}")
    assert msgspec.json.decode(account.value)["open"] == {}
    assert len(account.value) < 200 and len(rate.value) < 60 * 20
    assert (await b.remaining_budget(key.prefix)).day.used_usd == pytest.approx(0.2)
    assert [t.task_id for t in await b.list_tasks(other.prefix)] == ["t_other"]
    assert len(await b.list_tasks(key.prefix, limit=500)) == 200
    assert [t.task_id for t in await a.list_tasks(None, status="accepted")] == ["t_other"]


@pytest.mark.parametrize("hostile", ["t.../../x", "t_a b", "t_*", "t_>", "../../etc/passwd", "t_\u00e9", "", "t_" + "a" * 5000])
async def test_a_hostile_id_finds_nothing_and_leaves_the_connection_working(two: tuple[Store, Store], hostile: str) -> None:
    a, _ = two
    with pytest.raises(NotFound):
        await a.get_task(hostile)
    with pytest.raises(NotFound):
        await a.get_key(hostile)
    assert await a.get_reservation(hostile) is None
    # the same connection still answers: nothing above reached NATS as a malformed subject
    _, key = await a.create_key("developer")
    assert (await a.get_key(key.prefix)).prefix == key.prefix
