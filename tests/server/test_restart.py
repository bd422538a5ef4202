"""A server restart in the middle of a task: the next server settles it from the events stream."""

from __future__ import annotations

import asyncio

from mcp import Client

from bus import Bus, Settings, Subjects
from profiles import Store
from server._dispatch import Caller, Dispatcher
from server._mcp_app import create_mcp_server


async def test_a_task_that_finished_while_the_server_was_down_is_settled_and_readable_after_restart(
    settings: Settings,
) -> None:
    secret = settings.job_secret
    async with await Bus.open(settings.nats_url, Subjects(settings.subject_prefix)) as bus:
        await bus.ensure_streams()
        async with Store.for_settings(settings) as store:
            key, record = await store.create_key("developer")
            async with Dispatcher(settings, bus, store, secret=secret) as first:
                caller = await first.authenticate(key, via="test")
                submission = await first.submit(caller, _task())
            # the server is down; an operator cancels the queued task (as `taskbus tasks cancel` does)
            offline = Dispatcher(settings, bus, store, secret=secret)
            await offline.cancel(Caller(record.prefix, "developer"), submission.task_id, actor="cli:test")
            assert (await store.get_task(submission.task_id)).status == "accepted"
            assert (await store.get_reservation(submission.task_id)).state == "reserved"

            async with Dispatcher(settings, bus, store, secret=secret) as restarted:
                async with asyncio.timeout(10):
                    while (await store.get_task(submission.task_id)).status != "cancelled":
                        await asyncio.sleep(0.02)
                reservation = await store.get_reservation(submission.task_id)
                assert reservation.state == "settled" and reservation.actual_usd == 0
                async with Client(create_mcp_server(restarted, api_key=key)) as client:
                    shown = (await client.call_tool("get_task", {"task_id": submission.task_id})).structured_content
                assert shown["status"] == "cancelled" and shown["reason"] == "cancelled_before_start"


def _task():
    from bus import TaskRequest

    return TaskRequest(description="never runs")
