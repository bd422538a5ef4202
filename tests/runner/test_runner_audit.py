"""A real task's events, audited: every event type a run produces lands in the audit log
exactly once, in order, and the chain verifies."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from runner_kit import follow, make_job, scripted_model, submit

import bus as bus_module
from audit import open_db, run_audit, search, verify
from bus import Settings
from sandbox import Runner

pytestmark = pytest.mark.usefixtures("require_bwrap", "require_claude")

# a run that produces every event type: text, tool calls and results, a command the hook
# refuses (security), a written file (artifact), model calls, stderr/log lines, finished
EVERYTHING = """
[[turns]]
text = "Writing the file, then trying something not allowed."
tool_use = [{ name = "Bash", input = { command = "echo audited > audited.txt && echo to-stderr >&2", description = "write" } }]

[[turns]]
after_tool_result = true
text = "Now a fetch."
tool_use = [{ name = "Bash", input = { command = "curl -s http://example.com", description = "fetch" } }]

[[turns]]
after_tool_result = true
text = "All done."
"""


async def test_every_event_type_of_a_real_task_lands_once_in_order(runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus) -> None:
    db_path = tmp_path / "audit.db"
    stop = asyncio.Event()
    ready = asyncio.Event()
    async with scripted_model(runner_settings, tmp_path, scripts={"everything": EVERYTHING}) as (settings, _model):
        audit = asyncio.create_task(run_audit(settings, db_path=db_path, stop=stop, ready=ready))
        try:
            async with asyncio.timeout(30):
                await ready.wait()
            async with Runner(settings, backend="bwrap", slots=1, runner_id="r-audit"):
                job = make_job(settings, bus_module.TaskRequest(description="[script:everything] go"), tools=["Bash", "Read"])
                await submit(bus, job)
                events = await follow(bus, job.task_id)
            conn = open_db(db_path, readonly=True)
            try:
                async with asyncio.timeout(30):
                    while len(search(conn, task=job.task_id, limit=10_000)) < len(events):
                        await asyncio.sleep(0.1)
                rows = search(conn, task=job.task_id, limit=10_000)
                chain = verify(conn)
            finally:
                conn.close()
        finally:
            stop.set()
            await audit
    published = [(e.seq, e.__struct_config__.tag) for e in events]
    stored = [(r["seq"], r["type"]) for r in rows]
    assert stored == published, "every event once, in order"
    types = {t for _, t in stored}
    assert {
        "accepted",
        "started",
        "message",
        "tool_call",
        "tool_result",
        "model_call",
        "security",
        "artifact",
        "log",
        "finished",
    } <= types, types
    assert all(r["key_id"] == "tb_test" for r in rows)
    assert chain.ok, chain
