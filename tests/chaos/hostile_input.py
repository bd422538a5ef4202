"""Hostile input: malformed, oversized, wrong-type, deeply nested and invalid UTF-8 payloads
on every bus subject, and bad arguments to every MCP tool. Each must get a clear
rejection (or, on fire-and-forget subjects, be dropped and logged), crash nothing and
change no state: no task recorded, no budget reserved.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import msgspec
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from report import Row, measure
from stack import ChaosStack

MIB = 1024 * 1024
JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30,
)
FIELDS = [
    "description",
    "prompt",
    "messages",
    "files",
    "project",
    "timeout_s",
    "max_cost_usd",
    "model",
    "max_turns",
    "allow_tools",
    "max_tokens",
    "temperature",
    "kind",
    "type",
    "task_id",
    "policy",
    "signature",
]


def examples(strategy: st.SearchStrategy[Any], n: int) -> list[Any]:
    """``n`` values drawn by hypothesis (generate phase only, reproducible)."""
    found: list[Any] = []

    @settings(
        max_examples=n, database=None, phases=[Phase.generate], derandomize=True, suppress_health_check=list(HealthCheck), deadline=None
    )
    @given(strategy)
    def collect(value: Any) -> None:
        found.append(value)

    collect()
    return found


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def payloads(n_generated: int) -> list[bytes]:
    """Hand-written hostile payloads, then hypothesis-generated ones."""
    hand = [
        b"",
        b"{",
        b"\xff\xfe\xfd\x00",
        b"\xc3\x28",
        b"null",
        b"[]",
        b"42",
        b'"a string"',
        nested(100_000),
        b'{"kind": "task"}',
        b'{"kind": "task", "description": 123}',
        b'{"kind": "complete", "prompt": ["x"]}',
        b'{"kind": "task", "description": "x", "files": [{"path": "../../etc/passwd", "content": "x"}]}',
        b'{"kind": "complete", "prompt": "' + b"A" * (2 * MIB) + b'"}',
        b'{"kind": "complete", "prompt": "\\ud800"}',
        json.dumps({"type": "finished", "task_id": "../../x", "seq": -1}).encode(),
        json.dumps({"task_id": "t_x", "policy": {"tools": ["*"]}, "request": {}, "signature": "0" * 64}).encode(),
    ]
    generated = examples(st.binary(max_size=300), n_generated // 2)
    generated += [
        json.dumps(v).encode() for v in examples(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=6), n_generated - n_generated // 2)
    ]
    return hand + generated


async def _counts(settings: Any) -> tuple[int, int]:
    """How many tasks and reservations the control plane holds."""
    from profiles import Store
    from profiles._kv import scan

    async with Store.for_settings(settings, actor="chaos-count") as store:
        return (len(await store.list_tasks(None, limit=1_000_000)), len(await scan(store.ledger.kv, "res.>")))


async def bus_attack(stack: ChaosStack, row: Row, n_generated: int) -> int:
    """Every payload on every subject; submit requests must get a decodable rejection (or, for
    a generated payload that happens to be a valid request, an acceptance: counted and
    returned, as that request rightly leaves a task and a reservation behind)."""
    accepted = 0
    async with stack.bus() as b:
        s = b.subjects
        auth = {"Authorization": f"Bearer {stack.key}", "Taskbus-Schema": "1"}
        for payload in payloads(n_generated):
            for kind in ("task", "complete"):
                for headers in (auth, None):
                    try:
                        reply = await b.nc.request(s.submit(kind), payload, timeout=10, headers=headers)
                    except Exception as exc:  # noqa: BLE001 (any failure is counted, never raised)
                        row.notes.append(f"submit.{kind}: no reply to {payload[:40]!r}: {type(exc).__name__}")
                        row.unclear += 1
                        continue
                    try:
                        answer = msgspec.json.decode(reply.data)
                    except msgspec.DecodeError:
                        answer = {}
                    if answer.get("type") == "rejected" and answer.get("code") and answer.get("message"):
                        row.rejected += 1
                    elif answer.get("type") == "accepted" and headers is auth:  # a valid request: one task, one reservation
                        accepted += 1
                        row.notes.append(f"submit.{kind} accepted a valid request {payload[:60]!r}")
                    elif answer.get("type") == "accepted":
                        row.unclear += 1
                        row.notes.append(f"submit.{kind} accepted WITHOUT a key: {payload[:60]!r}")
                    else:
                        row.unclear += 1
                        row.notes.append(f"submit.{kind} answered {reply.data[:200]!r} to {payload[:60]!r}")
            small = payload[: 1 * MIB]
            for subject in (s.jobs("task"), s.jobs("complete"), s.events("t_hostile"), s.audit("malformed")):
                try:
                    await b.js.publish(subject, small, timeout=10)
                except Exception as exc:  # noqa: BLE001 -- the server may refuse it outright: that is a rejection too
                    row.notes.append(f"{subject}: publish refused: {type(exc).__name__}")
                row.rejected += 1
            for subject in (s.control("t_hostile"), s.runner("r-hostile"), s.audit_head()):
                await b.nc.publish(subject, small)
                row.rejected += 1
        await b.nc.flush(timeout=10)
    return accepted


def mcp_attacks() -> list[tuple[str, dict[str, Any]]]:
    huge = "x" * (2 * MIB)
    deep: Any = "x"
    for _ in range(2000):
        deep = [deep]
    attacks: list[tuple[str, dict[str, Any]]] = [
        ("complete", {}),
        ("complete", {"prompt": 123}),
        ("complete", {"prompt": None, "messages": "no"}),
        ("complete", {"prompt": huge}),
        ("complete", {"prompt": "x", "max_tokens": -1}),
        ("complete", {"prompt": "x", "model": "../../etc/passwd"}),
        ("complete", {"prompt": "x", "temperature": "hot"}),
        ("complete", {"messages": [{"role": "assistant", "content": "x"}]}),
        ("complete", {"prompt": deep}),
        ("complete", {"prompt": "x", "max_cost_usd": -5}),
        ("run_task", {}),
        ("run_task", {"description": ""}),
        ("run_task", {"description": 7}),
        ("run_task", {"description": huge}),
        ("run_task", {"description": "x", "files": [{"path": "../../etc/passwd", "content": "x"}]}),
        ("run_task", {"description": "x", "files": [{"path": "/etc/cron.d/evil", "content": "x"}]}),
        ("run_task", {"description": "x", "files": [{"path": "a/../../b", "content": "x"}]}),
        ("run_task", {"description": "x", "files": [{"path": "ok.txt", "content": "!!", "encoding": "base64"}]}),
        ("run_task", {"description": "x", "files": "not a list"}),
        ("run_task", {"description": "x", "project": "/etc"}),
        ("run_task", {"description": "x", "project": "../../root"}),
        ("run_task", {"description": "x", "project": "relative/path"}),
        ("run_task", {"description": "x", "timeout_s": "abc"}),
        ("run_task", {"description": "x", "timeout_s": 0}),
        ("run_task", {"description": "x", "max_turns": 10**9}),
        ("run_task", {"description": "x", "allow_tools": ["../x"]}),
        ("run_task", {"description": "x", "allow_tools": ["WebFetch"]}),
        ("run_task", {"description": "x", "model": "gpt-5"}),
        ("get_task", {}),
        ("get_task", {"task_id": "../../x"}),
        ("get_task", {"task_id": "t_" + "a" * 10_000}),
        ("get_task", {"task_id": 5}),
        ("cancel_task", {"task_id": "../../x"}),
        ("cancel_task", {}),
        ("list_tasks", {"limit": "many"}),
        ("list_tasks", {"status": "../../x", "limit": -1}),
        ("no_such_tool", {"x": 1}),
    ]
    for value in examples(st.dictionaries(st.sampled_from(FIELDS), JSON, max_size=5), 40):
        attacks.append(("run_task" if "description" in value else "complete", value))
    return attacks


async def mcp_attack(stack: ChaosStack, row: Row) -> None:
    async with stack.client() as client:
        for tool, args in mcp_attacks():
            try:
                result = await client.call_tool(tool, args)
            except Exception as exc:  # noqa: BLE001 -- a JSON-RPC error is a rejection when it says what was wrong
                text, is_error = str(exc), True
            else:
                text, is_error = "\n".join(getattr(c, "text", "") for c in result.content), result.is_error
            if is_error and text.strip() and "Traceback" not in text:
                row.rejected += 1
            else:
                row.unclear += 1
                row.notes.append(f"{tool}({str(args)[:80]}) was not rejected clearly: {text[:200]!r}")


def raw_bodies() -> list[bytes]:
    """JSON-RPC bodies no well-behaved client can send (the MCP client refuses to encode them)."""
    call = b'{"jsonrpc":"2.0","id":%d,"method":"tools/call","params":{"name":"complete","arguments":{"prompt":"%s"}}}'
    return [
        call % (101, b"\xff\xfe invalid utf-8"),
        call % (102, b"\\ud800 lone surrogate"),
        b"{",
        b"\x00" * 64,
        b'{"jsonrpc":"2.0","id":103,"method":"tools/call","params":' + nested(50_000) + b"}",
        call % (104, b"x" * (20 * MIB)),
        b'{"jsonrpc":"2.0","id":105,"method":"tools/call","params":"nope"}',
        b'[{"jsonrpc":"2.0","id":106,"method":"tools/list"}]' * 3,
    ]


async def raw_http_attack(stack: ChaosStack, row: Row) -> None:
    """Malformed bodies straight to the Streamable HTTP endpoint, inside a real session."""
    import httpx2

    headers = {"Authorization": f"Bearer {stack.key}", "Accept": "application/json, text/event-stream", "Content-Type": "application/json"}
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "chaos", "version": "1"}},
    }
    async with httpx2.AsyncClient(timeout=60) as http:
        response = await http.post(stack.url, json=init, headers=headers)
        session = response.headers.get("mcp-session-id")
        if session:
            headers["mcp-session-id"] = session
        headers["mcp-protocol-version"] = "2025-06-18"
        await http.post(stack.url, json={"jsonrpc": "2.0", "method": "notifications/initialized"}, headers=headers)
        for body in raw_bodies():
            try:
                answer = await http.post(stack.url, content=body, headers=headers)
            except httpx2.HTTPError as exc:
                row.unclear += 1
                row.notes.append(f"raw body {body[:40]!r}: {type(exc).__name__}: {exc}")
                continue
            text = answer.text
            if answer.status_code >= 500 or "Traceback" in text:
                row.unclear += 1
                row.notes.append(f"raw body {body[:40]!r}: HTTP {answer.status_code} {text[:200]!r}")
            elif answer.status_code >= 400 or '"error"' in text or '"isError":true' in text:
                row.rejected += 1
            else:
                row.unclear += 1
                row.notes.append(f"raw body {body[:40]!r} accepted: HTTP {answer.status_code} {text[:200]!r}")


async def hostile_input_scenario(work: Path, scale: Any) -> Row:
    started = time.monotonic()
    row = Row("hostile input")
    async with ChaosStack(work, runners={"r-bwrap-1": "bwrap"}, slots=1) as stack:
        before = await _counts(stack.settings)
        accepted = await bus_attack(stack, row, 40 if scale.name == "ci" else 400)
        await mcp_attack(stack, row)
        await raw_http_attack(stack, row)
        after = await _counts(stack.settings)
        expected = (before[0] + accepted, before[1] + accepted)
        if after != expected:  # a refused request left something behind
            row.state_changes += abs(after[0] - expected[0]) + abs(after[1] - expected[1])
            row.notes.append(f"tasks/ledger rows before {before}, after {after}, {accepted} valid request(s) accepted")
        row.crashed += [n for n, alive in stack.alive().items() if not alive]
        async with stack.client() as client:  # still serving: a real request works end to end
            ok = await client.call_tool("complete", {"prompt": "still alive?", "model": "claude-haiku-4-5"})
            if ok.is_error or "still alive?" not in ok.structured_content["text"]:
                row.crashed.append("serving")
        submitted = row.rejected + row.unclear
        row = await measure(stack, row)
        row.submitted = submitted
        row.crashed += [n for n, alive in stack.alive().items() if not alive]
    row.duration_s = round(time.monotonic() - started, 1)
    return row
