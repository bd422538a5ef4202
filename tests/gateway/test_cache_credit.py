"""Issue 16.9b through the real gateway and the scripted model: a call whose prompt is
mostly the cache the previous call wrote fits its cap and is forwarded, where pricing
every input token at the cache-write rate refused it."""

from __future__ import annotations

from pathlib import Path

import pytest

from .conftest import open_stack

OPUS = "claude-opus-4-8"
# The expensive script at opus prices: call 1 costs 1.25 USD and leaves a 70,000-token
# prefix in the cache; call 2 really costs 1.275 USD (50,000 of its tokens are cache
# reads). With 2.75 USD, 1.5 USD is left for call 2: enough for what it costs, not for
# its ~260,000 counted input tokens all priced at the cache-write rate (~1.63 USD).
CAP = 2.75


async def _two_calls(tmp_path: Path, *, credit: bool) -> tuple[list[int], float]:
    conversation = [{"role": "user", "content": "go"}]
    async with open_stack(
        tmp_path,
        "expensive",
        settings={"gateway_cache_read_credit": credit},
        models=[OPUS],
        model=OPUS,
        max_cost_usd=CAP,
    ) as s:
        statuses = []
        for _ in range(2):
            body = {"model": OPUS, "max_tokens": 32000, "messages": conversation}
            response = await s.client.post("/v1/messages", json=body, headers=s.auth)
            statuses.append(response.status_code)
            if response.status_code == 200:
                tool = next(b for b in response.json()["content"] if b["type"] == "tool_use")
                conversation = [
                    *conversation,
                    {"role": "assistant", "content": [tool]},
                    {"role": "user", "content": [{"type": "tool_result", "tool_use_id": tool["id"], "content": "ok"}]},
                ]
        return statuses, s.gateway.spent_usd


async def test_a_call_that_fits_thanks_to_cache_reads_is_forwarded(tmp_path: Path) -> None:
    statuses, spent = await _two_calls(tmp_path, credit=True)
    assert statuses == [200, 200]
    assert spent == pytest.approx(1.25 + 1.275) and spent <= CAP


async def test_without_the_credit_the_same_call_is_refused(tmp_path: Path) -> None:
    statuses, spent = await _two_calls(tmp_path, credit=False)
    assert statuses == [200, 400]
    assert spent == pytest.approx(1.25)
