"""The model auto-router: table-driven choices, the policy constraint and budget downgrades."""

from __future__ import annotations

import pytest

from bus import ChatMessage, CompleteRequest, PolicyDenied, Settings, TaskRequest
from server._router import estimate_cost, route_model

PRICES = Settings.load({}).prices
HAIKU, SONNET, OPUS = "claude-haiku-4-5", "claude-sonnet-4-6", "claude-opus-4-8"
ALL = [HAIKU, SONNET, OPUS]

CASES = [
    # (request, allowed, expected model, words the reason must contain)
    (CompleteRequest(prompt="What is the capital of France?"), ALL, HAIKU, ["short plain prompt"]),
    (CompleteRequest(prompt="Why does this fail?\n```python\ndef f(x):\n    return x[0]\n```"), ALL, SONNET, ["code"]),
    (CompleteRequest(prompt="Plan a migration step by step from MySQL to Postgres"), ALL, SONNET, ["multi-step"]),
    (CompleteRequest(prompt="x" * 40_000), ALL, SONNET, ["10k-token prompt"]),
    (CompleteRequest(prompt="x" * 240_000), ALL, OPUS, ["60k-token prompt"]),
    (CompleteRequest(prompt="hello", effort="high"), ALL, OPUS, ["effort=high"]),
    (CompleteRequest(prompt="Refactor utils.py", effort="low"), ALL, HAIKU, ["effort=low"]),
    (TaskRequest(description="Count the words in notes.txt"), ALL, SONNET, ["agentic task"]),
    (TaskRequest(description="Refactor app.py into modules, then write tests"), ALL, OPUS, ["code", "multi-step"]),
    (CompleteRequest(messages=[ChatMessage(role="user", content="hi")]), ALL, HAIKU, ["short"]),
    # constrained to what the profile allows
    (TaskRequest(description="Refactor app.py into modules, then write tests"), [HAIKU, SONNET], SONNET, ["closest allowed"]),
    (CompleteRequest(prompt="hello", effort="high"), [HAIKU], HAIKU, ["closest allowed"]),
    (CompleteRequest(prompt="hello"), [SONNET, OPUS], SONNET, ["closest allowed"]),
    (CompleteRequest(prompt="hello"), ["*"], HAIKU, ["small tier"]),
    # an explicit model is passed through (the policy check decides)
    (CompleteRequest(prompt="hello", model=OPUS), [HAIKU], OPUS, ["requested by the caller"]),
]


@pytest.mark.parametrize(("request_", "allowed", "model", "words"), CASES)
def test_router_picks_the_expected_model_and_says_why(request_, allowed, model, words) -> None:
    route = route_model(request_, allowed=allowed, prices=PRICES)
    assert route.model == model
    for word in words:
        assert word in route.reason


def test_router_downgrades_when_the_remaining_budget_is_short() -> None:
    request = TaskRequest(description="Refactor app.py into modules, then write tests")
    opus_cost = estimate_cost(request, OPUS, PRICES)
    sonnet_cost = estimate_cost(request, SONNET, PRICES)
    assert sonnet_cost < opus_cost
    route = route_model(request, allowed=ALL, prices=PRICES, remaining_usd=(sonnet_cost + opus_cost) / 2)
    assert route.model == SONNET
    assert "downgraded to claude-sonnet-4-6" in route.reason and OPUS in route.reason


def test_router_downgrades_to_the_cost_cap_too() -> None:
    request = CompleteRequest(prompt="hello", effort="high", max_tokens=4000)
    cap = estimate_cost(request, HAIKU, PRICES) * 1.5
    route = route_model(request, allowed=ALL, prices=PRICES, max_cost_usd=cap)
    assert route.model == HAIKU and "downgraded" in route.reason


def test_router_uses_the_cheapest_model_when_nothing_fits_and_says_so() -> None:
    request = TaskRequest(description="Refactor app.py into modules, then write tests")
    route = route_model(request, allowed=ALL, prices=PRICES, remaining_usd=0.0001)
    assert route.model == HAIKU and "cheapest allowed" in route.reason


def test_router_keeps_the_choice_when_money_is_plentiful() -> None:
    request = CompleteRequest(prompt="hello", effort="high")
    assert route_model(request, allowed=ALL, prices=PRICES, remaining_usd=100.0).model == OPUS


def test_router_refuses_auto_when_the_profile_allows_no_model() -> None:
    with pytest.raises(PolicyDenied) as info:
        route_model(CompleteRequest(prompt="hi"), allowed=[], prices=PRICES)
    assert info.value.code == "permission_denied" and "allows no model" in info.value.describe()
