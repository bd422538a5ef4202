"""The one admission path (issue #16): exactly-once submit, strict MCP arguments in one error
shape, $0 budgets refused before anything runs, the cache as a property of admission,
every refusal audited with its own kind. Real nats-server, real profiles Store, the SDK's
in-memory MCP Client; no runner is needed (all of this is decided before a job runs)."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import nats
import pytest
from mcp import Client

from bus import CompleteRequest, Settings, SubmitAccepted, SubmitRejected, Usage, decode_event, decode_reply
from server._dispatch_cache import CachedCompletion, CompletionCache, cache_key
from server._mcp_app import create_mcp_server

MODES = pytest.mark.parametrize("mode", ["auto", "legacy"])


async def _request(nc: Any, subject: str, payload: bytes, key: str | None, **headers: str) -> Any:
    hdrs = dict(headers)
    if key is not None:
        hdrs["Authorization"] = f"Bearer {key}"
    msg = await nc.request(subject, payload, headers=hdrs or None, timeout=60)
    return decode_reply(msg.data)


async def _pending_jobs(stack: Any) -> int:
    return (await stack.bus.js.stream_info(stack.bus.subjects.jobs_stream)).state.messages


async def _notice(stack: Any, kind: str, code: str | None = None) -> Any:
    async with asyncio.timeout(10):
        while True:
            for n in stack.notices:
                if n.kind == kind and (code is None or n.code == code):
                    return n
            await asyncio.sleep(0.01)


def _text(result: Any) -> str:
    return "\n".join(c.text for c in result.content if getattr(c, "type", "") == "text")


def _assert_error_shape(result: Any, code: str) -> None:
    assert result.is_error, result
    text = _text(result)
    assert text.startswith(f"[{code}] "), text
    assert result.structured_content["error"]["code"] == code
    assert result.structured_content["error"]["message"] and "pydantic" not in text and "Traceback" not in text
    assert "validation error for" not in text


# --------------------------------------------------------------------------- exactly-once submit


async def test_twenty_concurrent_submits_with_one_idempotency_id_make_one_task(settings: Settings, make_stack) -> None:
    async with make_stack(settings) as stack:
        await stack.store.update_profile("developer", max_concurrent=100)
        key = await stack.key("developer")
        nc = await nats.connect(settings.nats_url)
        try:
            body = b'{"description": "once only"}'
            replies = await asyncio.gather(
                *[_request(nc, stack.bus.subjects.submit("task"), body, key, **{"Nats-Msg-Id": "order-42"}) for _ in range(20)]
            )
            assert all(isinstance(r, SubmitAccepted) for r in replies), replies
            assert len({r.task_id for r in replies}) == 1
            assert await _pending_jobs(stack) == 1
            prefix = (await stack.store.authenticate(key)).prefix
            tasks = await stack.store.list_tasks(prefix, limit=100)
            assert [t.task_id for t in tasks] == [replies[0].task_id]
            events = await stack.bus.js.stream_info(stack.bus.subjects.events_stream)
            assert events.state.messages == 1  # one `accepted`, so one task to start
            other = await _request(nc, stack.bus.subjects.submit("task"), body, key, **{"Nats-Msg-Id": "order-43"})
            assert isinstance(other, SubmitAccepted) and other.task_id != replies[0].task_id
        finally:
            await nc.drain()


async def test_an_idempotency_id_survives_a_server_restart_and_is_shared_by_two_servers(settings: Settings, make_stack) -> None:
    body = b'{"description": "once across servers"}'
    async with make_stack(settings) as first:
        await first.store.update_profile("developer", max_concurrent=100)
        key = await first.key("developer")
        subject = first.bus.subjects.submit("task")
        nc = await nats.connect(settings.nats_url)
        try:
            before = await _request(nc, subject, body, key, **{"Nats-Msg-Id": "restart-1"})
        finally:
            await nc.drain()
    assert isinstance(before, SubmitAccepted)
    # a restarted server, and a second one beside it in the same queue group
    async with make_stack(settings) as one, make_stack(settings) as two:
        nc = await nats.connect(settings.nats_url)
        try:
            replies = await asyncio.gather(
                *[_request(nc, subject, body, key, **{"Nats-Msg-Id": mid}) for mid in ["restart-1"] * 10 + ["both-1"] * 20]
            )
        finally:
            await nc.drain()
        assert {r.task_id for r in replies[:10]} == {before.task_id}
        both = {r.task_id for r in replies[10:] if isinstance(r, SubmitAccepted)}
        assert len(both) == 1 and len(replies[10:]) == 20 and all(isinstance(r, SubmitAccepted) for r in replies)
        assert one.gateway.handled + two.gateway.handled == 30
        assert await _pending_jobs(one) == 2


@MODES
async def test_mcp_idempotency_key_returns_the_first_calls_task(settings: Settings, make_stack, mode: str) -> None:
    async with make_stack(settings) as stack:
        await stack.store.update_profile("developer", max_concurrent=100)
        key = await stack.key("developer")
        async with Client(create_mcp_server(stack.dispatcher, api_key=key), mode=mode) as client:
            args = {"description": "once via mcp", "wait": False, "idempotency_key": "mcp-1"}
            results = await asyncio.gather(*[client.call_tool("run_task", args) for _ in range(5)])
        ids = {r.structured_content["task_id"] for r in results}
        assert len(ids) == 1 and await _pending_jobs(stack) == 1


async def test_a_refused_first_request_does_not_pin_its_idempotency_id(settings: Settings, make_stack) -> None:
    async with make_stack(settings) as stack:
        key = await stack.key("readonly-analyst")
        nc = await nats.connect(settings.nats_url)
        try:
            subject = stack.bus.subjects.submit("task")
            refused = await _request(nc, subject, b'{"description": "x", "allow_tools": ["Bash"]}', key, **{"Nats-Msg-Id": "fix-and-retry"})
            assert isinstance(refused, SubmitRejected) and refused.code == "permission_denied"
            fixed = await _request(nc, subject, b'{"description": "x"}', key, **{"Nats-Msg-Id": "fix-and-retry"})
            assert isinstance(fixed, SubmitAccepted)
            again = await _request(nc, subject, b'{"description": "x"}', key, **{"Nats-Msg-Id": "fix-and-retry"})
            assert again == fixed
            other = await _request(nc, subject, b'{"description": "something else"}', key, **{"Nats-Msg-Id": "fix-and-retry"})
            assert isinstance(other, SubmitRejected) and other.code == "invalid_input"
            assert "different request" in other.message
            assert await _pending_jobs(stack) == 1
        finally:
            await nc.drain()


# --------------------------------------------------------------------------- strict MCP arguments


MISSPELT = {
    "complete": ("promt", "prompt"),
    "run_task": ("allowed_tools", "allow_tools"),
    "get_task": ("taskid", "task_id"),
    "cancel_task": ("task", "task_id"),
    "list_tasks": ("limt", "limit"),
}
BASE = {
    "complete": {"prompt": "hi"},
    "run_task": {"description": "x", "wait": False},
    "get_task": {"task_id": "t_x"},
    "cancel_task": {"task_id": "t_x"},
    "list_tasks": {},
}

# (tool, arguments, a word the message must contain)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("complete", {"prompt": 5}, "prompt"),
    ("complete", {"prompt": ["a"]}, "prompt"),
    ("complete", {"prompt": "hi", "max_tokens": 0}, "max_tokens"),
    ("complete", {"prompt": "hi", "max_tokens": -5}, "max_tokens"),
    ("complete", {"prompt": "hi", "max_tokens": 10**9}, "max_tokens"),
    ("complete", {"prompt": "hi", "max_tokens": "many"}, "max_tokens"),
    ("complete", {"prompt": "hi", "max_tokens": 1.5}, "max_tokens"),
    ("complete", {"prompt": "hi", "temperature": -0.1}, "temperature"),
    ("complete", {"prompt": "hi", "temperature": 2}, "temperature"),
    ("complete", {"prompt": "hi", "temperature": "hot"}, "temperature"),
    ("complete", {"prompt": "hi", "effort": "extreme"}, "effort"),
    ("complete", {"prompt": "hi", "cache": "maybe"}, "cache"),
    ("complete", {"prompt": "hi", "max_cost_usd": -1}, "max_cost_usd"),
    ("complete", {"prompt": "hi", "model": 3}, "model"),
    ("complete", {"prompt": "hi", "system": {"x": 1}}, "system"),
    ("complete", {"messages": [{"role": "system", "content": "x"}]}, "messages"),
    ("complete", {"messages": [{"role": "user"}]}, "messages"),
    ("complete", {"messages": [{"role": "user", "content": "x", "name": "bob"}]}, "name"),
    ("complete", {"messages": "hello"}, "messages"),
    ("complete", {"prompt": "hi", "idempotency_key": ""}, "idempotency_key"),
    ("complete", {"prompt": "hi", "idempotency_key": "x" * 300}, "idempotency_key"),
    ("complete", {"prompt": "hi", "bogus_field": 1}, "bogus_field"),
    ("run_task", {}, "description"),
    ("run_task", {"description": ""}, "description"),
    ("run_task", {"description": 7}, "description"),
    ("run_task", {"description": "x", "timeout_s": 0}, "timeout_s"),
    ("run_task", {"description": "x", "timeout_s": -5}, "timeout_s"),
    ("run_task", {"description": "x", "timeout_s": "long"}, "timeout_s"),
    ("run_task", {"description": "x", "max_turns": 0}, "max_turns"),
    ("run_task", {"description": "x", "max_turns": 100000}, "max_turns"),
    ("run_task", {"description": "x", "max_cost_usd": -0.5}, "max_cost_usd"),
    ("run_task", {"description": "x", "allow_tools": "Read"}, "allow_tools"),
    ("run_task", {"description": "x", "allow_tools": [1, 2]}, "allow_tools"),
    ("run_task", {"description": "x", "allow_agents": {"a": 1}}, "allow_agents"),
    ("run_task", {"description": "x", "allow_skills": 5}, "allow_skills"),
    ("run_task", {"description": "x", "files": [{"path": "a.txt"}]}, "files"),
    ("run_task", {"description": "x", "files": [{"path": "a", "content": "b", "encoding": "rot13"}]}, "encoding"),
    ("run_task", {"description": "x", "files": [{"path": "a", "content": "b", "mode": 755}]}, "mode"),
    ("run_task", {"description": "x", "files": "a.txt"}, "files"),
    ("run_task", {"description": "x", "project": 5}, "project"),
    ("run_task", {"description": "x", "wait": "soon"}, "wait"),
    ("run_task", {"description": "x", "effort": "max"}, "effort"),
    ("run_task", {"description": "x", "bogus_field": True}, "bogus_field"),
    ("get_task", {}, "task_id"),
    ("get_task", {"task_id": 5}, "task_id"),
    ("get_task", {"task_id": "t", "verbose": True}, "verbose"),
    ("cancel_task", {}, "task_id"),
    ("cancel_task", {"task_id": ["a"]}, "task_id"),
    ("list_tasks", {"limit": 0}, "limit"),
    ("list_tasks", {"limit": 501}, "limit"),
    ("list_tasks", {"limit": "ten"}, "limit"),
    ("list_tasks", {"status": "weird"}, "status"),
    ("list_tasks", {"offset": 3}, "offset"),
]


@MODES
async def test_misspelt_and_unknown_arguments_name_the_field_and_the_nearest_valid_name(settings: Settings, make_stack, mode: str) -> None:
    async with make_stack(settings) as stack:
        key = await stack.key("developer")
        async with Client(create_mcp_server(stack.dispatcher, api_key=key), mode=mode) as client:
            for tool, (wrong, right) in MISSPELT.items():
                value = ["Read"] if tool == "run_task" else "t_x" if "task" in right else 5 if right == "limit" else "x"
                result = await client.call_tool(tool, {**BASE[tool], wrong: value})
                _assert_error_shape(result, "invalid_input")
                assert f"`{wrong}`" in _text(result) and f"did you mean `{right}`" in _text(result), _text(result)
                result = await client.call_tool(tool, {**BASE[tool], "zzz_unknown": 1})
                _assert_error_shape(result, "invalid_input")
                assert "`zzz_unknown`" in _text(result) and "did you mean" not in _text(result)
            result = await client.call_tool("run_taks", {"description": "x"})
            _assert_error_shape(result, "not_found")
            assert "run_task" in _text(result)
        assert await _pending_jobs(stack) == 0  # the misspelt allow_tools did not run with every tool
        notice = await _notice(stack, "invalid_input")
        assert notice.actor == (await stack.store.authenticate(key)).prefix


@MODES
async def test_every_invalid_argument_gets_the_documented_error_shape(settings: Settings, make_stack, mode: str) -> None:
    assert len(INVALID) >= 40
    async with make_stack(settings) as stack:
        key = await stack.key("developer")
        async with Client(create_mcp_server(stack.dispatcher, api_key=key), mode=mode) as client:
            for tool, args, field in INVALID:
                result = await client.call_tool(tool, args)
                _assert_error_shape(result, "invalid_input")
                assert field in _text(result), (tool, args, _text(result))
        assert await _pending_jobs(stack) == 0


@MODES
async def test_advertised_input_schemas_forbid_unknown_properties(settings: Settings, make_stack, mode: str) -> None:
    async with make_stack(settings) as stack:
        key = await stack.key("developer")
        async with Client(create_mcp_server(stack.dispatcher, api_key=key), mode=mode) as client:
            tools = (await client.list_tools()).tools
    assert len(tools) >= 5
    for tool in tools:
        schema = tool.input_schema
        assert schema["additionalProperties"] is False, tool.name
        for sub in (schema.get("$defs") or {}).values():
            if sub.get("type") == "object":
                assert sub["additionalProperties"] is False, (tool.name, sub)
    by_name = {t.name: t for t in tools}
    assert "idempotency_key" in by_name["run_task"].input_schema["properties"]
    assert "idempotency_key" in by_name["complete"].input_schema["properties"]


# --------------------------------------------------------------------------- budgets


@MODES
async def test_a_zero_budget_refuses_complete_and_run_task_at_admission(settings: Settings, make_stack, mode: str) -> None:
    async with make_stack(settings) as stack:
        key = await stack.key("developer", day_usd=0.0)
        async with Client(create_mcp_server(stack.dispatcher, api_key=key), mode=mode) as client:
            completion = await client.call_tool("complete", {"prompt": "hi"})
            task = await client.call_tool("run_task", {"description": "x"})
        for result in (completion, task):
            _assert_error_shape(result, "budget_exceeded")
            assert "daily budget" in _text(result) and "resets at" in _text(result)
        assert await _pending_jobs(stack) == 0
        assert await stack.store.list_tasks((await stack.store.authenticate(key)).prefix) == []
        await _notice(stack, "budget_refused", "budget_exceeded")


async def test_a_spent_budget_refuses_over_nats_too(settings: Settings, make_stack) -> None:
    async with make_stack(settings) as stack:
        await stack.store.update_profile("developer", max_concurrent=100)
        key = await stack.key("developer", day_usd=0.2)
        nc = await nats.connect(settings.nats_url)
        try:
            subject = stack.bus.subjects.submit("task")
            first = await _request(nc, subject, b'{"description": "x", "max_cost_usd": 0.2}', key)
            assert isinstance(first, SubmitAccepted)
            second = await _request(nc, subject, b'{"description": "x"}', key)
            assert isinstance(second, SubmitRejected) and second.code == "budget_exceeded"
            assert "daily budget" in second.message and "resets at" in second.message
            zero_cap = await _request(nc, subject, b'{"description": "x", "max_cost_usd": 0}', await stack.key("admin"))
            assert isinstance(zero_cap, SubmitRejected) and zero_cap.code == "budget_exceeded"
            assert await _pending_jobs(stack) == 1
        finally:
            await nc.drain()


# --------------------------------------------------------------------------- the cache is part of admission


async def _seed_cache(stack: Any, profile: str, request: CompleteRequest, text: str) -> None:
    await CompletionCache(stack.bus).put(
        cache_key(profile, request),
        CachedCompletion(
            text=text,
            model="claude-haiku-4-5",
            routing_reason="seeded",
            usage=Usage(input_tokens=3, output_tokens=2),
            cost_usd=0.01,
            task_id="t_original",
        ),
    )


async def test_a_cache_hit_over_nats_is_registered_audited_and_rate_limited(settings: Settings, make_stack) -> None:
    async with make_stack(settings) as stack:
        await stack.store.update_profile("developer", rate_limit_per_min=2, max_concurrent=100)
        key = await stack.key("developer", day_usd=0.0)  # a hit costs nothing: no budget needed
        body = {"prompt": "cached?", "temperature": 0, "cache": True, "model": "claude-haiku-4-5"}
        await _seed_cache(stack, "developer", CompleteRequest(**body), "from the cache")
        nc = await nats.connect(settings.nats_url)
        try:
            subject = stack.bus.subjects.submit("complete")
            hit = await _request(nc, subject, json.dumps(body).encode(), key)
            assert isinstance(hit, SubmitAccepted)
            last = await nc.jetstream().get_last_msg(stack.bus.subjects.events_stream, hit.events_subject)
            finished = decode_event(last.data)
            assert type(finished).__name__ == "Finished" and finished.status == "succeeded"
            assert finished.result == "from the cache" and finished.cost_usd == 0
            async with asyncio.timeout(10):
                while (await stack.store.get_task(hit.task_id)).status != "succeeded":
                    await asyncio.sleep(0.02)
            notice = await _notice(stack, "cache_hit")
            assert notice.task_id == hit.task_id and notice.detail["original_task_id"] == "t_original"
            await _request(nc, subject, json.dumps(body).encode(), key)
            limited = await _request(nc, subject, json.dumps(body).encode(), key)
            assert isinstance(limited, SubmitRejected) and limited.code == "rate_limited"
            assert await _pending_jobs(stack) == 0  # no job for a hit
        finally:
            await nc.drain()


@MODES
async def test_a_cache_hit_over_mcp_is_registered_audited_and_rate_limited(settings: Settings, make_stack, mode: str) -> None:
    async with make_stack(settings) as stack:
        await stack.store.update_profile("developer", rate_limit_per_min=2, max_concurrent=100)
        key = await stack.key("developer")
        body = {"prompt": "cached?", "temperature": 0, "cache": True, "model": "claude-haiku-4-5"}
        await _seed_cache(stack, "developer", CompleteRequest(**body), "from the cache")
        async with Client(create_mcp_server(stack.dispatcher, api_key=key), mode=mode) as client:
            hit = await client.call_tool("complete", body)
            assert not hit.is_error, _text(hit)
            doc = hit.structured_content
            assert doc["cached"] is True and doc["text"] == "from the cache" and doc["cost_usd"] == 0
            record = await stack.store.get_task(doc["task_id"])
            assert record.kind == "complete"
            notice = await _notice(stack, "cache_hit")
            assert notice.task_id == doc["task_id"] and notice.detail["via"] == "mcp"
            await client.call_tool("complete", body)
            limited = await client.call_tool("complete", body)
            _assert_error_shape(limited, "rate_limited")
        assert await _pending_jobs(stack) == 0


# --------------------------------------------------------------------------- audit and the submit space


async def test_every_gateway_refusal_is_audited_with_its_own_kind(settings: Settings, make_stack) -> None:
    async with make_stack(settings) as stack:
        key = await stack.key("developer")
        nc = await nats.connect(settings.nats_url)
        try:
            subjects = stack.bus.subjects
            banana = await _request(nc, f"{subjects.prefix}.submit.banana", b'{"description": "x"}', key)
            assert isinstance(banana, SubmitRejected) and banana.code == "invalid_input"
            assert subjects.submit("task") in banana.message
            deep = await _request(nc, f"{subjects.prefix}.submit.task.extra", b'{"description": "x"}', key)
            assert isinstance(deep, SubmitRejected) and deep.code == "invalid_input"
            malformed = await _request(nc, subjects.submit("task"), b"{nope", key)
            assert isinstance(malformed, SubmitRejected) and malformed.code == "malformed_message"
            empty = await _request(nc, subjects.submit("complete"), b"{}", key)
            assert isinstance(empty, SubmitRejected) and empty.code == "invalid_input"
            big = await _request(nc, subjects.submit("task"), b"x" * (settings.max_message_bytes + 1), key)
            assert isinstance(big, SubmitRejected) and big.code == "message_too_large"
        finally:
            await nc.drain()
        prefix = (await stack.store.authenticate(key)).prefix
        for kind in ("invalid_input", "malformed_message", "message_too_large"):
            notice = await _notice(stack, kind, kind)
            assert notice.actor == prefix


async def test_a_zero_budget_starts_no_sandbox_with_a_real_runner(e2e_settings: Settings, make_e2e) -> None:
    from server_kit import sandboxes_left

    async with make_e2e(e2e_settings) as stack:
        key = await stack.key("developer", day_usd=0.0)
        async with Client(create_mcp_server(stack.dispatcher, api_key=key)) as client:
            completion = await client.call_tool("complete", {"prompt": "hi"})
            task = await client.call_tool("run_task", {"description": "x"})
        _assert_error_shape(completion, "budget_exceeded")
        _assert_error_shape(task, "budget_exceeded")
        assert await sandboxes_left(stack.settings) == []
        assert await stack.store.list_tasks(None) == []


async def test_concurrent_duplicates_start_one_sandbox_run_with_a_real_runner(e2e_settings: Settings, make_e2e) -> None:
    from server._dispatch_events import replay_events

    async with make_e2e(e2e_settings) as stack:
        await stack.store.update_profile("developer", max_concurrent=100)
        key = await stack.key("developer")
        nc = await nats.connect(e2e_settings.nats_url)
        try:
            replies = await asyncio.gather(
                *[
                    _request(nc, stack.bus.subjects.submit("task"), b'{"description": "say once"}', key, **{"Nats-Msg-Id": "run-once"})
                    for _ in range(20)
                ]
            )
        finally:
            await nc.drain()
        assert len({r.task_id for r in replies}) == 1 and all(isinstance(r, SubmitAccepted) for r in replies)
        task_id = replies[0].task_id
        async with asyncio.timeout(300):
            while (await stack.store.get_task(task_id)).status in ("accepted", "running"):
                await asyncio.sleep(0.1)
        events = await replay_events(stack.bus, task_id)
        kinds = [type(e).__name__ for e in events]
        assert kinds.count("Started") == 1 and kinds.count("Finished") == 1, kinds
        assert [t.task_id for t in await stack.store.list_tasks(None)] == [task_id]


async def test_two_server_processes_sharing_one_nats_admit_one_task_per_idempotency_id(settings: Settings, make_stack) -> None:
    import os
    import signal
    import sys

    async with make_stack(settings) as stack:
        await stack.store.update_profile("developer", max_concurrent=100)
        key = await stack.key("developer")
        env = {
            **os.environ,
            "TASKBUS_NATS_URL": settings.nats_url,
            "TASKBUS_DATA_DIR": settings.data_dir,
            "TASKBUS_SUBJECT_PREFIX": settings.subject_prefix,
            "TASKBUS_JOB_SECRET": settings.job_secret,
        }
        other = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli",
            "serve",
            "--transport",
            "none",
            env=env,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        nc = await nats.connect(settings.nats_url)
        try:
            ping = f"{settings.subject_prefix}.submit.ping"  # an unknown kind: rejected, nothing recorded
            async with asyncio.timeout(60):
                sent = 0
                while stack.gateway.handled == sent:  # until the other process answers one
                    assert other.returncode is None, (await other.stderr.read()).decode()[-2000:]
                    reply = await _request(nc, ping, b"{}", key)
                    assert isinstance(reply, SubmitRejected) and reply.code == "invalid_input"
                    sent += 1
            before = stack.gateway.handled
            replies = await asyncio.gather(
                *[
                    _request(
                        nc, stack.bus.subjects.submit("task"), b'{"description": "two servers"}', key, **{"Nats-Msg-Id": "two-processes"}
                    )
                    for _ in range(20)
                ]
            )
            assert 0 < stack.gateway.handled - before < 20  # both processes answered some
        finally:
            await nc.drain()
            other.send_signal(signal.SIGTERM)
            async with asyncio.timeout(30):
                await other.wait()
        assert all(isinstance(r, SubmitAccepted) for r in replies), replies
        assert len({r.task_id for r in replies}) == 1
        assert await _pending_jobs(stack) == 1
        assert [t.task_id for t in await stack.store.list_tasks(None)] == [replies[0].task_id]


async def test_a_claim_left_pending_by_a_dead_server_is_taken_over_with_its_task_id(settings: Settings, make_stack) -> None:
    from bus import BusTimeout
    from server._idempotency import SubmitClaims, claim_key

    async with make_stack(settings) as stack:
        admitted: list[tuple[str, bool]] = []

        async def admit(task_id: str, takeover: bool) -> dict[str, Any]:
            admitted.append((task_id, takeover))
            return {"task_id": task_id}

        fresh = SubmitClaims(stack.bus, 3600, wait_s=0.2)
        kv = await fresh._bucket()
        dead = {"state": "pending", "task_id": "t_dead", "at": time.time(), "fingerprint": "f"}
        await kv.create(claim_key("tb_k", "id-1"), json.dumps(dead).encode())
        with pytest.raises(BusTimeout):  # still being admitted (not stale yet): the duplicate gives up
            await fresh.once("tb_k", "id-1", "f", admit)
        assert admitted == []
        stale = SubmitClaims(stack.bus, 3600, stale_s=0.0)
        assert await stale.once("tb_k", "id-1", "f", admit) == {"task_id": "t_dead"}
        assert await stale.once("tb_k", "id-1", "f", admit) == {"task_id": "t_dead"}
        assert admitted == [("t_dead", True)]  # taken over once, with the dead server's task id
