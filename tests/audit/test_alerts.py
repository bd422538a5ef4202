"""Critical security events and bursts of auth failures become alerts on the bus and run the hook."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import msgspec
from audit_helpers import RunningWriter, wait_rows, wait_until

from audit import AlertRules, AuditOptions
from audit._writer import Notable
from bus import AuditNotice, Bus, Message, Security, Settings, new_task_id


async def collect_alerts(bus: Bus) -> tuple[asyncio.Queue[tuple[str, dict]], object]:
    queue: asyncio.Queue[tuple[str, dict]] = asyncio.Queue()

    async def on_alert(msg) -> None:
        queue.put_nowait((msg.subject, json.loads(msg.data)))

    sub = await bus.nc.subscribe(f"{bus.subjects.prefix}.alerts.*", cb=on_alert)
    await bus.nc.flush()
    return queue, sub


async def test_a_blocked_command_is_republished_as_an_alert_and_runs_the_hook(bus: Bus, settings: Settings, db: Path, tmp_path: Path):
    hook_out = tmp_path / "alert.json"
    settings = msgspec.structs.replace(settings, alert_command=f"cat > {hook_out}")
    alerts, sub = await collect_alerts(bus)
    writer = await RunningWriter(settings, db).start()
    try:
        task_id = new_task_id()
        now = datetime.now(UTC)
        await bus.publish(
            bus.subjects.events(task_id), Security(task_id=task_id, seq=1, ts=now, kind="tool_denied", detail="WebFetch not allowed")
        )  # not critical
        await bus.publish(
            bus.subjects.events(task_id),
            Security(task_id=task_id, seq=2, ts=now, kind="blocked_command", detail="rm -rf / blocked by the hook"),
        )
        async with asyncio.timeout(20):
            subject, alert = await alerts.get()
        assert subject == bus.subjects.alerts("blocked_command")
        assert alert["kind"] == "blocked_command" and alert["task_id"] == task_id and alert["row"] == 2
        assert "rm -rf" in alert["detail"]
        await wait_until(lambda: hook_out.exists() and hook_out.stat().st_size > 0, what="the alert hook output")
        assert json.loads(hook_out.read_text())["row"] == 2
        assert alerts.empty()  # the warning-level tool_denied raised nothing
    finally:
        await writer.close()
        await sub.unsubscribe()


async def test_auth_failures_above_the_threshold_raise_one_alert(bus: Bus, settings: Settings, db: Path):
    alerts, sub = await collect_alerts(bus)
    writer = await RunningWriter(settings, db, AuditOptions(auth_failure_threshold=3, auth_failure_window_s=60)).start()
    try:
        for actor in ("tb_mallory", "tb_mallory", "tb_honest", "tb_mallory"):
            await bus.publish(bus.subjects.audit("auth_failure"), AuditNotice(kind="auth_failure", actor=actor))
        async with asyncio.timeout(20):
            subject, alert = await alerts.get()
        assert subject == bus.subjects.alerts("auth_failures")
        assert alert["key_id"] == "tb_mallory" and "3 auth failures" in alert["detail"]
        await wait_rows(db, 4)
    finally:
        await writer.close()
        await sub.unsubscribe()
    assert alerts.empty()


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for its parent does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][0] != "Z"
    except (OSError, IndexError):
        return False


async def test_a_hanging_alert_hook_is_killed_with_its_children_and_never_holds_up_ingest(
    bus: Bus, settings: Settings, db: Path, tmp_path: Path
):
    pids = tmp_path / "hook.pids"
    # the hook leaves a child behind and hangs: both must be killed (the hook's process group)
    settings = msgspec.structs.replace(settings, alert_command=f"sleep 600 & echo $! >> {pids}; echo $$ >> {pids}; wait")
    writer = await RunningWriter(settings, db, AuditOptions(alert_timeout_s=0.5)).start()
    try:
        task_id = new_task_id()
        now = datetime.now(UTC)
        for seq in range(1, 4):
            await bus.publish(
                bus.subjects.events(task_id),
                Security(task_id=task_id, seq=seq, ts=now, kind="escape_attempt", detail="mount /proc", severity="critical"),
            )
        await bus.publish(bus.subjects.events(task_id), Message(task_id=task_id, seq=4, ts=now, text="after"))
        await wait_rows(db, 4, timeout=10)
        await wait_until(lambda: pids.exists() and len(pids.read_text().split()) >= 2, what="the hook to start")
        started = [int(p) for p in pids.read_text().split()[:2]]
        await wait_until(lambda: not any(_alive(p) for p in started), what=f"the hung hook {started} to be killed")
    finally:
        async with asyncio.timeout(15):  # the hook runs are bounded, so stopping is too
            await writer.close()
    remaining = [int(p) for p in pids.read_text().split()]
    assert not any(_alive(p) for p in remaining), "a hook process outlived the writer"


def test_auth_failure_window_counts_per_actor_and_forgets_old_failures():
    rules = AlertRules(auth_threshold=3, auth_window_s=10)

    def failure(actor: str, second: int) -> Notable:
        return Notable(
            row=second, type="notice", kind="auth_failure", task_id=None, key_id=actor, ts_us=second * 1_000_000, severity=None, detail=None
        )

    assert rules.evaluate([failure("a", 0), failure("a", 5), failure("b", 6), failure("a", 20)]) == []
    alerts = rules.evaluate([failure("a", 21), failure("a", 22)])
    assert [a["kind"] for a in alerts] == ["auth_failures"] and alerts[0]["key_id"] == "a"
    assert rules.evaluate([failure("a", 23)]) == []  # counting starts again after an alert
