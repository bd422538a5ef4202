"""Admission and discovery through the real server stack: the catalog's current entries
decide what a task may name; MCP clients can list what their key may use."""

from __future__ import annotations

import asyncio
import json

import pytest
from mcp import Client

from bus import (
    Bus,
    Catalog,
    CatalogLimits,
    PolicyDenied,
    Settings,
    Subjects,
    TaskRequest,
    decode_job,
    decode_notice,
    load_or_create_job_secret,
    make_bundle,
)
from profiles import Store
from server._dispatch import Caller, Dispatcher
from server._mcp_app import create_mcp_server

AGENT = b"---\nname: scribe\ndescription: Writes workflows from notes\n---\nYou write workflows.\n"
SKILL = b"---\nname: notes-kit\ndescription: Meeting notes helpers\n---\nUse it.\n"


async def last_job(bus: Bus, task_id: str):
    msg = await bus.js.get_last_msg(bus.subjects.jobs_stream, bus.subjects.jobs("task"))
    job = decode_job(msg.data)
    assert job.task_id == task_id
    return job


async def test_admission_pins_what_exists_and_a_removed_entry_fails_with_what_the_key_may_use(settings: Settings) -> None:
    async with await Bus.open(settings.nats_url, Subjects(settings.subject_prefix), name="test-server") as bus:
        await bus.ensure_streams()
        notices = []

        async def on_notice(msg) -> None:
            notices.append(decode_notice(msg.data))

        sub = await bus.nc.subscribe(bus.subjects.audit_all(), cb=on_notice)
        catalog = await Catalog.open(bus.js, bus.subjects.catalog_bucket)
        entry, _ = await catalog.put(make_bundle("agent", "scribe", {"scribe.md": AGENT}), limits=CatalogLimits(), actor="t")
        await catalog.put(make_bundle("skill", "notes-kit", {"SKILL.md": SKILL}), limits=CatalogLimits(), actor="t")
        async with Store.for_settings(settings) as store:
            async with Dispatcher(settings, bus, store, secret=load_or_create_job_secret(settings)) as dispatcher:
                admin_key, admin = await store.create_key("admin")
                dev_key, dev = await store.create_key("developer")
                admin_caller = Caller(admin.prefix, "admin")

                first = await dispatcher.submit(admin_caller, TaskRequest(description="x", allow_agents=["scribe"]))
                job = await last_job(bus, first.task_id)
                assert job.policy.agents == ["scribe"] and job.policy.skills == ["notes-kit"]
                assert {(r.name, r.sha256) for r in job.policy.catalog} >= {("scribe", entry.sha256)}

                # discovery: each key sees what its profile lets it use, with descriptions
                async with Client(create_mcp_server(dispatcher, api_key=admin_key)) as client:
                    offered = json.loads((await client.read_resource("taskbus://catalog")).contents[0].text)
                assert [a["name"] for a in offered["agents"]] == ["general-purpose", "Explore", "Plan", "scribe"]
                assert offered["agents"][3] == {
                    "name": "scribe",
                    "description": "Writes workflows from notes",
                    "builtin": False,
                    "sha256": entry.sha256,
                }
                assert [s["name"] for s in offered["skills"]] == ["notes-kit"]
                async with Client(create_mcp_server(dispatcher, api_key=dev_key)) as client:
                    offered = json.loads((await client.read_resource("taskbus://catalog")).contents[0].text)
                assert [a["name"] for a in offered["agents"]] == ["general-purpose", "Explore", "Plan"]
                assert offered["skills"] == []

                with pytest.raises(
                    PolicyDenied,
                    match=r"agent 'scribe' is not allowed by profile 'developer' \(this key may use: general-purpose, Explore, Plan\)",
                ):
                    await dispatcher.submit(Caller(dev.prefix, "developer"), TaskRequest(description="x", allow_agents=["scribe"]))

                await catalog.remove("agent", "scribe")
                with pytest.raises(PolicyDenied) as refused:
                    await dispatcher.submit(admin_caller, TaskRequest(description="x", allow_agents=["scribe"]))
                assert refused.value.message == ("agent 'scribe' is not in the catalog (this key may use: general-purpose, Explore, Plan)")
                # the job admitted before the removal is untouched: still queued, still pinned
                assert (await last_job(bus, first.task_id)).policy.catalog == job.policy.catalog
                async with asyncio.timeout(10):  # both refusals audited, with their message
                    while len([n for n in notices if n.kind == "denied"]) < 2:
                        await asyncio.sleep(0.05)
                messages = [n.detail["message"] for n in notices if n.kind == "denied"]
                assert messages[-1] == refused.value.message and "not allowed by profile 'developer'" in messages[0]
        await sub.unsubscribe()
