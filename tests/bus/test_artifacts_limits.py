"""The artifacts Object Store carries the size and age limits of the Settings, on a real
nats-server: on a new bucket, on an existing unlimited one, and a full bucket refuses
new objects instead of cutting old ones."""

from __future__ import annotations

import nats.js.errors
import pytest

from bus import Bus, Settings

DAY = 86_400


async def _limits(bus: Bus) -> tuple[int, float | None, str]:
    info = await bus.js.stream_info(f"OBJ_{bus.subjects.artifacts_bucket}")
    return info.config.max_bytes, info.config.max_age, str(info.config.discard)


async def test_a_new_bucket_gets_the_limits_and_ensure_streams_stays_idempotent(bus: Bus) -> None:
    await bus.ensure_streams(artifacts_max_bytes=5_000_000, artifacts_max_age_s=2 * DAY)
    await bus.ensure_streams(artifacts_max_bytes=5_000_000, artifacts_max_age_s=2 * DAY)
    max_bytes, max_age, discard = await _limits(bus)
    assert max_bytes == 5_000_000 and max_age == pytest.approx(2 * DAY)
    assert discard.lower().endswith("new")
    # a process that passes no limits (profiles CLI) leaves them as they are
    await bus.ensure_streams()
    assert (await _limits(bus))[:2] == (5_000_000, pytest.approx(2 * DAY))


async def test_an_existing_unlimited_bucket_gets_the_limits(bus: Bus) -> None:
    await bus.ensure_streams()
    assert (await _limits(bus))[0] == -1
    await bus.ensure_streams(artifacts_max_bytes=7_000_000, artifacts_max_age_s=DAY)
    assert (await _limits(bus))[:2] == (7_000_000, pytest.approx(DAY))


async def test_a_full_bucket_refuses_new_artifacts_and_keeps_the_old_ones(bus: Bus) -> None:
    await bus.ensure_streams(artifacts_max_bytes=300_000, artifacts_max_age_s=DAY)
    store = await bus.js.object_store(bus.subjects.artifacts_bucket)
    await store.put("first", b"a" * 200_000)
    with pytest.raises(nats.js.errors.APIError):  # JetStream refuses the publish
        await store.put("second", b"b" * 200_000)
    assert (await store.get("first")).data == b"a" * 200_000


def test_the_settings_defaults_are_limits() -> None:
    settings = Settings.load({})
    assert settings.artifacts_store_max_bytes == 1024**3
    assert settings.artifacts_store_max_age_days == 30.0


async def test_a_limit_the_nats_store_cannot_reserve_is_a_clear_error(bus: Bus) -> None:
    from bus import BusError

    with pytest.raises(BusError, match="TASKBUS_ARTIFACTS_STORE_MAX_BYTES"):
        await bus.ensure_streams(artifacts_max_bytes=10**18)
