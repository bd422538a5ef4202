"""API key lifecycle: shown once, stored hashed, revoke, expiry, rotation grace."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

import pytest

from bus import AuthError, InvalidInput, KeyExpired, KeyRevoked, NotFound
from profiles import Store


def _jetstream_bytes(store_dir: Path, bucket: str) -> bytes:
    """Every file JetStream keeps for the control bucket's stream: what is on disk."""
    files = [p for p in sorted(store_dir.rglob("*")) if p.is_file() and f"KV_{bucket}" in str(p)]
    assert files, f"no JetStream files for KV_{bucket} under {store_dir}"
    return b"".join(p.read_bytes() for p in files)


async def test_a_new_key_is_returned_once_and_only_its_hash_is_on_disk(store: Store, nats_server, bus):
    plaintext, record = await store.create_key("developer", name="ci")

    assert plaintext.startswith("tb_") and len(plaintext) == 46
    assert plaintext.startswith(record.prefix) and len(record.prefix) == 11
    await bus.nc.flush()
    on_disk = _jetstream_bytes(nats_server.store_dir, bus.subjects.control_bucket)
    assert plaintext.encode() not in on_disk
    assert plaintext[11:].encode() not in on_disk  # not even the part after the display prefix
    assert hashlib.sha256(plaintext.encode()).hexdigest().encode() in on_disk
    listed = await store.list_keys()
    assert [k.prefix for k in listed] == [record.prefix]
    assert plaintext not in repr(listed)


async def test_a_valid_key_authenticates_to_its_record(store: Store):
    plaintext, record = await store.create_key("readonly-analyst")
    assert await store.authenticate(plaintext) == record


@pytest.mark.parametrize("given", ["", "tb_short", "sk-ant-" + "x" * 40, "tb_" + "A" * 43])
async def test_unknown_or_malformed_keys_are_refused_without_echoing_them(store: Store, given: str):
    with pytest.raises(AuthError) as refused:
        await store.authenticate(given)
    assert type(refused.value) is AuthError
    assert refused.value.code == "unauthorized"
    if given:
        assert given not in refused.value.describe()


async def test_a_revoked_key_is_refused_with_its_own_code(store: Store):
    plaintext, record = await store.create_key("developer")
    await store.revoke(record.prefix)
    await store.revoke(record.prefix)  # twice is fine

    with pytest.raises(KeyRevoked) as refused:
        await store.authenticate(plaintext)
    assert refused.value.code == "key_revoked"
    assert record.prefix in refused.value.message and plaintext not in refused.value.describe()


async def test_an_expired_key_is_refused_with_its_own_code(store: Store, clock):
    plaintext, record = await store.create_key("developer", expires_at=clock() + timedelta(days=30))
    clock.advance(30 * 86400 - 1)
    assert await store.authenticate(plaintext) == record

    clock.advance(1)
    with pytest.raises(KeyExpired) as refused:
        await store.authenticate(plaintext)
    assert refused.value.code == "key_expired"
    assert "expired" in refused.value.message


async def test_creating_a_key_for_an_unknown_profile_or_a_past_expiry_fails(store: Store, clock):
    with pytest.raises(NotFound, match="no profile named 'ghost'"):
        await store.create_key("ghost")
    with pytest.raises(InvalidInput, match="in the past"):
        await store.create_key("developer", expires_at=clock() - timedelta(seconds=1))
    assert await store.list_keys() == []


async def test_a_rotated_key_works_during_the_grace_period_then_is_refused(store: Store, clock):
    old_plain, old = await store.create_key("developer", name="deploy")
    new_plain, new = await store.rotate(old.prefix, grace_s=3600)

    assert new.prefix != old.prefix and new.profile == "developer" and new.name == "deploy"
    assert new.account == old.account == old.prefix
    assert (await store.authenticate(old_plain)).prefix == old.prefix
    assert (await store.authenticate(new_plain)).prefix == new.prefix

    clock.advance(3600)
    with pytest.raises(KeyExpired) as refused:
        await store.authenticate(old_plain)
    assert f"rotated to {new.prefix}" in refused.value.message
    assert (await store.authenticate(new_plain)).prefix == new.prefix
    with pytest.raises(InvalidInput, match="already rotated"):
        await store.rotate(old.prefix, grace_s=0)


async def test_rotation_keeps_the_budget_spent_by_the_old_key(store: Store):
    _, old = await store.create_key("developer")
    await store.set_budget(key_id=old.prefix, day_usd=3.0)
    await store.reserve(old.prefix, "t1", 2.0)
    _, new = await store.rotate(old.prefix, grace_s=0)

    status = await store.remaining_budget(new.prefix)
    assert status.day.limit_usd == 3.0
    assert status.day.used_usd == pytest.approx(2.0)
