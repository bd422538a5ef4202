"""The NATS submit gateway and the dispatch refusals, on a real nats-server and a real profiles Store.

No runner is needed here: everything below is decided before a job would run.
"""

from __future__ import annotations

import asyncio
import json

import nats

from bus import (
    Job,
    Settings,
    SubmitAccepted,
    SubmitRejected,
    TaskRequest,
    decode_event,
    decode_job,
    decode_reply,
)
from server._submit_gateway import bearer


async def _request(nc, subject: str, payload: bytes, key: str | None, **headers: str):
    hdrs = dict(headers)
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    msg = await nc.request(subject, payload, headers=hdrs or None, timeout=10)
    return decode_reply(msg.data)


async def _pending_jobs(stack) -> int:
    info = await stack.bus.js.stream_info(stack.bus.subjects.jobs_stream)
    return info.state.messages


def test_bearer_reads_the_key_from_the_authorization_header() -> None:
    assert bearer({"Authorization": "Bearer tb_abc"}) == "tb_abc"
    assert bearer({"authorization": "bearer  tb_abc "}) == "tb_abc"
    assert bearer({"Authorization": "Basic xyz"}) is None
    assert bearer({"Authorization": "Bearer "}) is None
    assert bearer(None) is None


async def test_bad_key_malformed_and_oversized_requests_are_rejected_and_the_gateway_keeps_serving(settings: Settings, make_stack) -> None:
    async with make_stack(settings) as stack:
        key = await stack.key("developer")
        nc = await nats.connect(settings.nats_url)
        try:
            subjects = stack.bus.subjects
            task = json.dumps({"description": "say hello"}).encode()

            no_key = await _request(nc, subjects.submit("task"), task, None)
            wrong_key = await _request(nc, subjects.submit("task"), task, "tb_" + "x" * 43)
            malformed = await _request(nc, subjects.submit("task"), b"{not json", key)
            wrong_type = await _request(nc, subjects.submit("task"), b'{"description": 42}', key)
            empty_completion = await _request(nc, subjects.submit("complete"), b"{}", key)
            oversized = await _request(nc, subjects.submit("task"), b'{"description": "' + b"x" * settings.max_message_bytes + b'"}', key)
            for reply in (no_key, wrong_key, malformed, wrong_type, empty_completion, oversized):
                assert isinstance(reply, SubmitRejected), reply
            assert no_key.code == "unauthorized" and "API key" in no_key.message
            assert wrong_key.code == "unauthorized" and "tb_xxxx" not in wrong_key.message
            assert malformed.code == "malformed_message" and "JSON" in malformed.message
            assert wrong_type.code == "malformed_message" and "description" in wrong_type.message
            assert empty_completion.code == "invalid_input" and "prompt" in empty_completion.message
            assert oversized.code == "message_too_large" and str(settings.max_message_bytes) in oversized.message
            assert await _pending_jobs(stack) == 0

            good = await _request(nc, subjects.submit("task"), task, key)
            assert isinstance(good, SubmitAccepted)
            assert good.events_subject == subjects.events(good.task_id)
            assert await _pending_jobs(stack) == 1
            auth_failures = [n for n in stack.notices if n.kind == "auth_failure"]
            assert len(auth_failures) >= 2 and all(n.code == "unauthorized" for n in auth_failures)
        finally:
            await nc.drain()


async def test_an_accepted_submit_publishes_accepted_then_a_signed_job(settings: Settings, make_stack) -> None:
    from bus import load_or_create_job_secret, verify_job

    async with make_stack(settings) as stack:
        key = await stack.key("developer")
        nc = await nats.connect(settings.nats_url)
        try:
            reply = await _request(
                nc, stack.bus.subjects.submit("task"), b'{"description": "list the files"}', key, **{"Nats-Msg-Id": "req-1"}
            )
            again = await _request(
                nc, stack.bus.subjects.submit("task"), b'{"description": "list the files"}', key, **{"Nats-Msg-Id": "req-1"}
            )
            assert isinstance(reply, SubmitAccepted) and again == reply  # idempotent by Nats-Msg-Id
            js = nc.jetstream()
            first = await js.get_last_msg(stack.bus.subjects.events_stream, reply.events_subject)
            event = decode_event(first.data)
            assert event.seq == 1 and type(event).__name__ == "Accepted"
            assert event.profile == "developer" and event.model and event.routing_reason.startswith("auto:")
            job_msg = await js.get_last_msg(stack.bus.subjects.jobs_stream, stack.bus.subjects.jobs("task"))
            job = decode_job(job_msg.data)
            assert isinstance(job, Job) and job.task_id == reply.task_id and isinstance(job.request, TaskRequest)
            verify_job(job, load_or_create_job_secret(settings))
            assert job_msg.headers and job_msg.headers.get("Nats-Msg-Id") == reply.task_id
            assert await _pending_jobs(stack) == 1
            record = await stack.store.get_task(reply.task_id)
            assert record.status == "accepted" and record.reserved_usd > 0
        finally:
            await nc.drain()


async def test_a_denied_permission_is_refused_with_its_name_audited_and_nothing_published(settings: Settings, make_stack) -> None:
    async with make_stack(settings) as stack:
        key = await stack.key("readonly-analyst")
        nc = await nats.connect(settings.nats_url)
        try:
            reply = await _request(nc, stack.bus.subjects.submit("task"), b'{"description": "x", "allow_tools": ["Bash"]}', key)
            assert isinstance(reply, SubmitRejected) and reply.code == "permission_denied"
            assert "Bash" in reply.message
            only_complete = await stack.key("complete-only")
            reply = await _request(nc, stack.bus.subjects.submit("task"), b'{"description": "x"}', only_complete)
            assert isinstance(reply, SubmitRejected) and reply.code == "permission_denied"
            assert "run_task" in reply.message
            assert await _pending_jobs(stack) == 0
            async with asyncio.timeout(5):
                while len([n for n in stack.notices if n.kind == "denied"]) < 2:
                    await asyncio.sleep(0.01)
        finally:
            await nc.drain()


async def test_concurrent_submits_against_a_small_budget_admit_only_what_fits(settings: Settings, make_stack) -> None:
    async with make_stack(settings) as stack:
        await stack.store.update_profile("developer", max_concurrent=100)
        key = await stack.key("developer", day_usd=0.5)
        nc = await nats.connect(settings.nats_url)
        try:
            body = json.dumps({"description": "hello", "max_cost_usd": 0.1}).encode()
            replies = await asyncio.gather(*[_request(nc, stack.bus.subjects.submit("task"), body, key) for _ in range(20)])
            accepted = [r for r in replies if isinstance(r, SubmitAccepted)]
            refused = [r for r in replies if isinstance(r, SubmitRejected)]
            assert len(accepted) == 5 and len(refused) == 15
            assert {r.code for r in refused} == {"budget_exceeded"}
            assert all("max_cost_usd" in r.message for r in refused)
            status = await stack.store.remaining_budget((await stack.store.authenticate(key)).prefix)
            assert status.day.used_usd <= 0.5 + 1e-9
            assert await _pending_jobs(stack) == 5
            assert len([n for n in stack.notices if n.kind == "budget_refused"]) >= 1
        finally:
            await nc.drain()


async def test_rate_and_concurrency_limits_are_refused_with_their_codes_and_audited(settings: Settings, make_stack) -> None:
    async with make_stack(settings) as stack:
        await stack.store.update_profile("developer", rate_limit_per_min=3, max_concurrent=1)
        key = await stack.key("developer")
        nc = await nats.connect(settings.nats_url)
        try:
            subject, body = stack.bus.subjects.submit("task"), b'{"description": "hello"}'
            replies = [await _request(nc, subject, body, key) for _ in range(4)]
            assert isinstance(replies[0], SubmitAccepted)
            assert isinstance(replies[1], SubmitRejected) and replies[1].code == "concurrency_limit"
            assert "cancel" in replies[1].message
            assert isinstance(replies[3], SubmitRejected) and replies[3].code == "rate_limited"
            assert "Retry" in replies[3].message
            assert await _pending_jobs(stack) == 1
            async with asyncio.timeout(5):
                while not {"rate_limited", "concurrency_limit"} <= {n.kind for n in stack.notices}:
                    await asyncio.sleep(0.01)
        finally:
            await nc.drain()


async def test_a_bus_that_stops_answering_during_admission_gives_a_bus_error_reply_and_no_job(settings: Settings, make_stack) -> None:
    """The task registry's stream is gone (as while JetStream elects a leader or restarts):
    the publisher gets a clear ``bus_error`` saying to retry, not an internal error."""
    async with make_stack(settings) as stack:
        key = await stack.key("developer")
        await stack.bus.js.delete_stream(f"KV_{stack.bus.subjects.tasks_bucket}")
        nc = await nats.connect(settings.nats_url)
        try:
            reply = await _request(nc, stack.bus.subjects.submit("complete"), b'{"prompt": "hi"}', key)
        finally:
            await nc.drain()
        assert isinstance(reply, SubmitRejected) and reply.code == "bus_error", reply
        assert "retry" in reply.message
        assert await _pending_jobs(stack) == 0
