"""Two and three `taskbus serve` processes with SEPARATE data dirs on one 3-node cluster
(replicas 3), driven through MCP over HTTP and the `taskbus` CLI:

- 50 concurrent `run_task` spread over them against one key's budget: zero overshoot,
  every refusal says it is the budget;
- a key revoked through one server's CLI is refused by every server at its next call;
- one idempotency key sent to all of them gives one task;
- a server SIGKILLed mid-load: another answers its callers' `get_task`, and the key's
  reservations are settled or released from the task events (none left running).

These rely on the control plane in JetStream (issue #17, the kvstore work): keys, budgets,
the task registry and idempotency claims shared by every server. With a per-server SQLite
Store they fail (each data dir knows only its own keys).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from sandbox._scripted import ScriptedModelServer

from .conftest import Cluster
from .multi import MultiServer


def text_of(result: Any) -> str:
    return "\n".join(getattr(c, "text", "") for c in result.content)


@pytest.mark.parametrize("servers", [2, 3])
async def test_fifty_concurrent_run_tasks_over_several_servers_never_overshoot_one_keys_budget(
    cluster: Cluster, tmp_path: Path, servers: int
) -> None:
    async with MultiServer(cluster, tmp_path, servers=servers) as stack:
        key, prefix = stack.make_key(day_usd=1.0)
        outcomes: list[tuple[bool, str]] = []

        async def call(client: Any, i: int) -> None:
            result = await client.call_tool("run_task", {"description": f"task {i}", "wait": False, "max_cost_usd": 0.1})
            outcomes.append((not result.is_error, text_of(result)))

        async with stack.clients(key) as clients, asyncio.TaskGroup() as tg:
            for i in range(50):
                tg.create_task(call(clients[i % servers], i))
        accepted = [t for ok, t in outcomes if ok]
        refused = [t for ok, t in outcomes if not ok]
        assert len(outcomes) == 50
        assert len(accepted) * 0.1 <= 1.0 + 1e-9, f"{len(accepted)} tasks of $0.10 admitted on a $1.00 budget"
        assert len(accepted) >= 9, f"the budget admits ten $0.10 tasks; got {len(accepted)}: {refused[:3]}"
        for text in refused:
            assert "budget" in text.lower(), text
        shown = stack.cli("budgets", "show", "--key", prefix, data_of=servers - 1)
        assert shown["day"]["limit_usd"] == 1.0, shown
        assert shown["running"] == len(accepted), shown


async def test_a_key_revoked_through_one_server_is_refused_by_every_server_at_its_next_call(cluster: Cluster, tmp_path: Path) -> None:
    async with MultiServer(cluster, tmp_path, servers=3) as stack:
        key, prefix = stack.make_key()
        for i in range(3):
            assert await stack.auth_status(i, key) == 200, f"server {i} does not know the key yet"
        stack.cli("keys", "revoke", prefix, data_of=0)
        for i in range(3):
            assert await stack.auth_status(i, key) == 401, f"server {i} still accepts the revoked key"


async def test_one_idempotency_key_sent_to_every_server_gives_one_task(cluster: Cluster, tmp_path: Path) -> None:
    async with MultiServer(cluster, tmp_path, servers=3) as stack:
        key, _ = stack.make_key()
        args = {"description": "the same request", "wait": False, "max_cost_usd": 0.1, "idempotency_key": "order-42"}
        async with stack.clients(key) as clients:
            results = await asyncio.gather(*(c.call_tool("run_task", args) for c in clients))
        for r in results:
            assert not r.is_error, text_of(r)
        ids = {r.structured_content["task_id"] for r in results}
        assert len(ids) == 1, f"one idempotency key gave {len(ids)} tasks: {ids}"


async def test_a_killed_server_s_tasks_are_served_by_another_and_its_reservations_are_settled(
    cluster: Cluster, tmp_path: Path, require_bwrap: None, require_claude: Path
) -> None:
    async with ScriptedModelServer(port=0, required_api_key="scripted-model-key") as model:
        async with MultiServer(cluster, tmp_path, servers=2, runner=True, model_url=model.url) as stack:
            key, prefix = stack.make_key()
            async with stack.client(0, key) as client:
                ids = []
                for i in range(4):
                    queued = await client.call_tool("run_task", {"description": f"say hello {i}", "wait": False, "max_cost_usd": 0.5})
                    assert not queued.is_error, text_of(queued)
                    ids.append(queued.structured_content["task_id"])
            stack.server(0).kill()
            results: dict[str, dict[str, Any]] = {}
            async with stack.client(1, key) as client:
                deadline = time.monotonic() + 300
                while len(results) < len(ids) and time.monotonic() < deadline:
                    for task_id in ids:
                        if task_id not in results:
                            shown = await client.call_tool("get_task", {"task_id": task_id})
                            assert not shown.is_error, f"server 1 does not know {task_id}: {text_of(shown)}"
                            if shown.structured_content.get("status") not in ("accepted", "running"):
                                results[task_id] = shown.structured_content
                    await asyncio.sleep(0.5)
            assert len(results) == len(ids), f"unfinished after 300 s: {set(ids) - set(results)}"
            for shown in results.values():
                assert shown["status"] == "succeeded" or shown.get("reason"), shown
            deadline = time.monotonic() + 60
            while (budget := stack.cli("budgets", "show", "--key", prefix, data_of=1))["running"] and time.monotonic() < deadline:
                await asyncio.sleep(0.5)
            assert budget["running"] == 0, f"reservations left open after every task finished: {budget}"
            assert budget["day"]["used_usd"] > 0, f"the finished tasks' spend was never settled: {budget}"
