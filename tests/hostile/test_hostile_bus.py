"""A local user against the bus: the embedded NATS of ``taskbus up`` with per-role users.

The server is started the way ``taskbus up`` starts it (``bus.write_config`` with
``server_authorization`` of the data dir). The attacker is a plain NATS client: without
credentials, or with the operator's (cli) or the audit writer's. Replay and expiry go
through a real runner answering ``complete`` jobs from the scripted model.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import uuid
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import msgspec
import nats
import pytest
from nats.js.api import DeliverPolicy

import bus
from bus import Bus, BusError, EmbeddedNats, Finished, Settings, Subjects
from bus._embedded import check_config
from bus._natsauth import ROLES, credentials_path, read_credentials, server_authorization
from sandbox import Runner, ScriptedModelServer


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[dict[str, Any]]:
    data = tmp_path / "data"
    prefix = "h" + uuid.uuid4().hex[:8]
    server = EmbeddedNats(data / "nats", authorization=server_authorization(data, prefix))
    async with server:
        base = Settings.load({}, data_dir=str(data), nats_url=server.url, subject_prefix=prefix, job_secret="hostile-" + uuid.uuid4().hex)
        as_role = {role: msgspec.structs.replace(base, nats_credentials=str(credentials_path(data, role))) for role in ROLES}
        async with await Bus.for_settings(as_role["server"], name="hostile-server") as server_bus:
            await server_bus.ensure_streams()
            yield {"data": data, "server": server, "settings": as_role, "bus": server_bus, "subjects": Subjects(prefix)}


async def _count(b: Bus, stream: str) -> int:
    return (await b.js.stream_info(stream)).state.messages


async def _until(what: str, check: Any, timeout: float = 60.0) -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = await check()
        if value:
            return value
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what}")


def test_the_config_taskbus_up_writes_is_accepted_by_nats_server_and_holds_no_password(tmp_path: Path) -> None:
    from cli._up import make_plan

    data = tmp_path / "data"
    settings = Settings.load({}, data_dir=str(data))
    plan = make_plan(settings, {}, backend="bwrap", nats_port=0, http_port=0)
    config = data / "nats" / "nats-server.conf"
    check_config(config)
    text = config.read_text()
    for role in ROLES:
        creds = read_credentials(credentials_path(data, role))
        assert creds.password not in text
        assert f'"{creds.user}"' in text
        assert stat.S_IMODE(os.stat(credentials_path(data, role)).st_mode) == 0o600
    assert text.count('password: "$2a$') == len(ROLES)
    assert stat.S_IMODE(os.stat(config).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(data / "nats-auth").st_mode) == 0o700
    envs = {s.name: s.env for s in plan.specs}
    assert envs["runner"]["TASKBUS_NATS_CREDENTIALS"].endswith("runner.json")
    assert envs["server"]["TASKBUS_NATS_CREDENTIALS"].endswith("server.json")
    assert envs["audit"]["TASKBUS_NATS_CREDENTIALS"].endswith("audit.json")
    assert "TASKBUS_NATS_CREDENTIALS" not in envs["nats"]
    for env in envs.values():  # a path in the environment, never a password
        assert not any(read_credentials(credentials_path(data, r)).password in v for r in ROLES for v in env.values())


async def test_a_client_without_credentials_cannot_connect_publish_or_subscribe(stack: dict[str, Any]) -> None:
    url = stack["server"].url
    with pytest.raises(BusError, match="refused the connection"):
        await Bus.open(url, stack["subjects"], open_timeout=5)
    wrong = bus._natsauth.NatsCredentials(user=f"{stack['subjects'].prefix}-cli", password="guessed")
    with pytest.raises(BusError, match="refused the connection") as caught:
        await Bus.open(url, stack["subjects"], open_timeout=5, credentials=wrong)
    assert "guessed" not in str(caught.value)
    with pytest.raises(Exception, match=r"(?i)authorization"):  # the raw client, as an attacker would use it
        await nats.connect(url, allow_reconnect=False, connect_timeout=3, max_reconnect_attempts=0)


async def test_the_cli_and_audit_users_cannot_publish_jobs_events_cancels_or_cache_entries(stack: dict[str, Any]) -> None:
    s: Subjects = stack["subjects"]
    server_bus: Bus = stack["bus"]
    task_id = bus.new_task_id()
    seen: list[str] = []

    async def spy_cb(msg: Any) -> None:
        seen.append(msg.subject)

    spy = await server_bus.nc.subscribe(s.events_all(), cb=spy_cb)
    forged = bus.Finished(task_id=task_id, seq=2, ts=bus.utcnow(), status="succeeded", result="fake", cost_usd=0.0)
    for role in ("cli", "audit"):
        errors: list[str] = []

        async def on_error(exc: Exception, errors: list[str] = errors) -> None:
            errors.append(str(exc))

        nc = await nats.connect(
            stack["server"].url, error_cb=on_error, allow_reconnect=False, **bus.connect_options(stack["settings"][role])
        )
        try:
            await nc.publish(s.events(task_id), bus.encode(forged))
            await nc.publish(s.jobs("task"), b'{"task_id": "x"}')
            await nc.publish(s.control(task_id), bus.encode(bus.Cancel(task_id=task_id)))
            await nc.publish(f"$KV.{s.cache_bucket}.poisoned", b"a cached answer of the attacker's")
            if role == "cli":  # the operator's user cannot manage streams either (audit's can: its consumers)
                await nc.publish(f"$JS.API.STREAM.PURGE.{s.events_stream}", b"")
            await nc.flush()
            want = 5 if role == "cli" else 4
            await _until("the permission errors", lambda errors=errors, want=want: asyncio.sleep(0, len(errors) >= want), 10)
        finally:
            await nc.close()
        assert all("permissions violation" in e.lower() for e in errors), errors
    await server_bus.nc.flush()
    await spy.unsubscribe()
    assert seen == []
    assert await _count(server_bus, s.events_stream) == 0
    assert await _count(server_bus, s.jobs_stream) == 0
    assert await _count(server_bus, f"KV_{s.cache_bucket}") == 0


@pytest.fixture
async def runner(stack: dict[str, Any], tmp_path: Path) -> AsyncIterator[Settings]:
    async with ScriptedModelServer(log_path=tmp_path / "model.jsonl") as model:
        settings = msgspec.structs.replace(stack["settings"]["runner"], upstream_url=model.url, upstream_api_key="scripted-model-key")
        async with Runner(settings, slots=1, runner_id="r-hostile", kinds=("complete",)):
            yield settings


def _job(settings: Settings, **policy: Any) -> bus.Job:
    task_id = bus.new_task_id()
    request = bus.CompleteRequest(prompt="say hello")
    fields: dict[str, Any] = {
        "task_id": task_id,
        "kind": "complete",
        "key_id": "tb_test",
        "profile": "test",
        "model": "claude-sonnet-4-6",
        "models": ["claude-sonnet-4-6"],
        "max_cost_usd": 1.0,
        "nonce": uuid.uuid4().hex,
        "expires_at": bus.utcnow() + timedelta(hours=1),
    }
    fields.update(policy)
    pol = bus.Policy(**fields)
    return bus.Job(task_id=task_id, policy=pol, request=request, signature=bus.sign_job(task_id, pol, request, settings.job_secret))


async def _events(b: Bus, task_id: str) -> list[bus.Event]:
    sub = await b.js.subscribe(b.subjects.events(task_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    out: list[bus.Event] = []
    try:
        while True:
            try:
                msg = await sub.next_msg(timeout=1.0)
            except nats.errors.TimeoutError:
                return out
            out.append(bus.decode_event(msg.data))
    finally:
        await sub.unsubscribe()


async def _finished(b: Bus, task_id: str) -> Finished:
    async def last() -> Finished | None:
        events = await _events(b, task_id)
        return events[-1] if events and isinstance(events[-1], Finished) else None

    return await _until(f"task {task_id} to finish", last, 90)


async def test_a_captured_job_published_again_is_refused_and_audited(stack: dict[str, Any], runner: Settings) -> None:
    server_bus: Bus = stack["bus"]
    s: Subjects = stack["subjects"]
    job = _job(runner)
    captured = bus.encode(job)
    await server_bus.publish(s.jobs("complete"), captured, msg_id=job.task_id)
    first = await _finished(server_bus, job.task_id)
    assert first.status == "succeeded"
    before = await _events(server_bus, job.task_id)

    await server_bus.publish(s.jobs("complete"), captured)  # the replay: the same signed bytes, a new message

    async def notice() -> bus.AuditNotice | None:
        try:
            msg = await server_bus.js.get_last_msg(s.audit_stream, s.audit("replayed_job"))
        except Exception:  # noqa: BLE001 - not there yet
            return None
        return bus.decode_notice(msg.data)

    found = await _until("the replayed_job audit notice", notice, 60)
    assert found.task_id == job.task_id and found.detail["severity"] == "critical"
    await _until("the replayed job to leave the queue", lambda: _queue_empty(server_bus), 30)
    after = await _events(server_bus, job.task_id)
    assert after == before  # nothing ran again, nothing was billed again
    assert sum(isinstance(e, Finished) for e in after) == 1


async def _queue_empty(b: Bus) -> bool:
    return await _count(b, b.subjects.jobs_stream) == 0


async def test_an_expired_job_is_refused_as_a_security_event(stack: dict[str, Any], runner: Settings) -> None:
    server_bus: Bus = stack["bus"]
    job = _job(runner, issued_at=bus.utcnow() - timedelta(hours=2), expires_at=bus.utcnow() - timedelta(hours=1))
    await server_bus.publish(stack["subjects"].jobs("complete"), job, msg_id=job.task_id)
    finished = await _finished(server_bus, job.task_id)
    assert (finished.status, finished.reason) == ("denied", "expired")
    events = await _events(server_bus, job.task_id)
    assert [e.kind for e in events if isinstance(e, bus.Security)] == ["expired_job"]
    assert not any(isinstance(e, bus.Started) for e in events)


class NewerPolicy(bus.Policy):
    """What a newer server might send: one more field, with a default (schema-evolution rules)."""

    sandbox_profile: str = "standard"


async def test_a_job_from_a_newer_server_with_a_defaulted_field_verifies_and_runs(stack: dict[str, Any], runner: Settings) -> None:
    old = _job(runner)
    newer_policy = NewerPolicy(**msgspec.structs.asdict(old.policy))
    signature = bus.sign_job(old.task_id, newer_policy, old.request, runner.job_secret)
    wire = json.loads(bus.encode(bus.Job(task_id=old.task_id, policy=newer_policy, request=old.request, signature=signature)))
    assert wire["policy"]["sandbox_profile"] == "standard"  # the field travels
    decoded = bus.decode_job(json.dumps(wire).encode())  # as this (older) runner sees it
    bus.verify_job(decoded, runner.job_secret)
    # a non-default value the older runner cannot see is not silently accepted
    changed = NewerPolicy(**{**msgspec.structs.asdict(old.policy), "sandbox_profile": "wide-open"})
    wire["policy"]["sandbox_profile"] = "wide-open"
    wire["signature"] = bus.sign_job(old.task_id, changed, old.request, runner.job_secret)
    with pytest.raises(bus.SignatureError):
        bus.verify_job(bus.decode_job(json.dumps(wire).encode()), runner.job_secret)
    # and through the real runner: the newer job (default value) runs
    wire["policy"]["sandbox_profile"] = "standard"
    wire["signature"] = signature
    await stack["bus"].publish(stack["subjects"].jobs("complete"), json.dumps(wire).encode(), msg_id=old.task_id)
    assert (await _finished(stack["bus"], old.task_id)).status == "succeeded"


def test_data_dir_databases_and_secret_are_private_whoever_creates_them(tmp_path: Path) -> None:
    """Not `taskbus up`: the audit writer and the job secret create them (the control plane
    with the keys is in NATS, whose store dir `taskbus up` creates 0700)."""
    import sqlite3

    from audit._db import open_db

    data = tmp_path / "fresh" / "data"
    settings = Settings.load({}, data_dir=str(data))
    old_umask = os.umask(0o022)  # the usual umask: files would be 0644 without care
    try:
        bus.load_or_create_job_secret(settings)
        open_db(data / "audit.db").close()
    finally:
        os.umask(old_umask)
    assert stat.S_IMODE(os.stat(data).st_mode) == 0o700
    for name in ("audit.db", "job_secret"):
        assert stat.S_IMODE(os.stat(data / name).st_mode) == 0o600, name
    for side in data.glob("*.db-*"):
        assert stat.S_IMODE(os.stat(side).st_mode) & 0o077 == 0, side.name
    # an existing world-readable database is taken down to 0600 on the next open
    loose = tmp_path / "loose.db"
    sqlite3.connect(loose).close()
    os.chmod(loose, 0o644)
    open_db(loose).close()
    assert stat.S_IMODE(os.stat(loose).st_mode) == 0o600


def test_a_job_signed_before_defaults_were_left_out_still_verifies_and_a_tampered_one_does_not() -> None:
    """Rolling upgrade from a server that signed every field (the old canonical form)."""
    import hashlib
    import hmac

    settings = Settings.load({}, job_secret="legacy-secret")
    job = _job(settings)
    old_bytes = bus.canonical({"task_id": job.task_id, "policy": job.policy, "request": job.request})
    legacy = msgspec.structs.replace(job, signature=hmac.new(b"legacy-secret", old_bytes, hashlib.sha256).hexdigest())
    bus.verify_job(bus.decode_job(bus.encode(legacy)), "legacy-secret")
    tampered = msgspec.structs.replace(legacy, policy=msgspec.structs.replace(legacy.policy, max_cost_usd=999.0))
    with pytest.raises(bus.SignatureError):
        bus.verify_job(tampered, "legacy-secret")


async def test_a_password_in_the_nats_url_is_not_printed(stack: dict[str, Any]) -> None:
    creds = read_credentials(credentials_path(stack["data"], "cli"))
    url = stack["server"].url.replace("nats://", f"nats://{creds.user}:{creds.password}@")
    settings = Settings.load({}, nats_url=url)
    assert creds.password not in repr(settings) and creds.password not in str(settings)
    with pytest.raises(BusError) as caught:  # a refused password in the URL: the error names the host only
        await Bus.open(url.replace(creds.password, creds.password[:-1] + "x"), stack["subjects"], open_timeout=5)
    assert creds.password[:-1] not in str(caught.value) and "***" in str(caught.value)
    async with await Bus.open(url, stack["subjects"], open_timeout=5):  # and a right one connects
        pass


def test_a_replayed_job_notice_raises_a_critical_alert() -> None:
    from audit._alerts import AlertRules
    from audit._writer import Notable

    row = Notable(
        row=7, type="notice", kind="replayed_job", task_id="t_1", key_id="runner:r1", ts_us=1, severity=None, detail="replayed_job"
    )
    other = Notable(row=8, type="notice", kind="key_created", task_id=None, key_id="cli:x", ts_us=2, severity=None, detail=None)
    alerts = AlertRules().evaluate([row, other])
    assert [(a["kind"], a["severity"], a["task_id"]) for a in alerts] == [("replayed_job", "critical", "t_1")]
