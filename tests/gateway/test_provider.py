"""AnthropicProvider (``complete`` jobs) against the real scripted model server."""

from __future__ import annotations

import secrets
import socket
from pathlib import Path

import pytest

from bus import (
    BudgetExceeded,
    ChatMessage,
    CompleteRequest,
    ModelError,
    PolicyDenied,
    Settings,
)
from sandbox._gateway import CallRecord
from sandbox._providers import AnthropicProvider, ModelProvider
from sandbox._scripted import ScriptedModelServer

from .conftest import MODEL, make_policy, script


async def _provider_run(tmp_path: Path, model_script, request: CompleteRequest, **policy):
    real_key = "sk-ant-api03-" + secrets.token_urlsafe(24)
    async with ScriptedModelServer(model_script, log_path=tmp_path / "m.jsonl", required_api_key=real_key) as model:
        settings = Settings.load({}, data_dir=str(tmp_path), upstream_url=model.url, upstream_api_key=real_key)
        deltas: list[str] = []
        calls: list[CallRecord] = []

        async def on_delta(text: str) -> None:  # the runner's callback is async
            deltas.append(text)

        async with AnthropicProvider(settings) as provider:
            assert isinstance(provider, ModelProvider)
            try:
                result = await provider.complete(request, make_policy(kind="complete", **policy), on_delta=on_delta, on_call=calls.append)
            except Exception as exc:
                result = exc
        return result, deltas, calls, model.requests(), real_key


async def test_a_completion_streams_text_deltas_and_reports_usage_and_cost(tmp_path: Path) -> None:
    chatty = script('chunk_chars = 5\n[[turns]]\nat = "any"\ntext = "Paris is the capital of France."\n')
    request = CompleteRequest(
        messages=[ChatMessage(role="user", content="Hi"), ChatMessage(role="assistant", content="Hello")],
        prompt="Capital of France?",
        system="Be brief.",
        max_tokens=300,
    )
    result, deltas, calls, upstream, _ = await _provider_run(tmp_path, chatty, request)
    assert result.text == "Paris is the capital of France." == "".join(deltas)
    assert len(deltas) > 3  # streamed, not one blob
    sent = next(r for r in upstream if r["path"] == "/v1/messages")
    assert sent["model"] == MODEL and sent["stream"] is True and sent["max_tokens"] == 300
    assert sent["user_text"] == "Capital of France?"
    assert (result.usage.input_tokens, result.usage.output_tokens) == (sent["input_tokens"], sent["output_tokens"])
    assert result.cost_usd == pytest.approx((sent["input_tokens"] * 3 + sent["output_tokens"] * 15) / 1e6)
    [call] = calls
    assert call.cost_usd == result.cost_usd and result.stop_reason == "end_turn"


async def test_a_completion_that_cannot_fit_its_cap_is_refused_before_calling_the_model(tmp_path: Path) -> None:
    request = CompleteRequest(prompt="x" * 4000, max_tokens=100)
    result, deltas, calls, upstream, _ = await _provider_run(tmp_path, "hello", request, max_cost_usd=0.000001)
    assert isinstance(result, BudgetExceeded) and result.code == "budget_exceeded"
    assert [r["path"] for r in upstream] == ["/v1/messages/count_tokens"]
    assert calls == [] and deltas == []


async def test_a_small_cap_lowers_max_tokens_of_a_completion(tmp_path: Path) -> None:
    request = CompleteRequest(prompt="hi", max_tokens=4000)
    result, _, calls, upstream, _ = await _provider_run(tmp_path, "hello", request, max_cost_usd=0.001)
    sent = next(r for r in upstream if r["path"] == "/v1/messages")
    assert sent["max_tokens"] < 4000
    assert calls[0].max_tokens == sent["max_tokens"] and result.cost_usd <= 0.001


async def test_a_model_error_is_raised_without_the_real_key(tmp_path: Path) -> None:
    failing = script('[[turns]]\nerror = { status = 500, message = "boom" }\n')
    result, _, calls, _, real_key = await _provider_run(tmp_path, failing, CompleteRequest(prompt="hi"))
    assert isinstance(result, ModelError) and "500" in result.message and "boom" in result.message
    assert real_key not in result.message
    assert calls[0].status == 500 and calls[0].cost_usd == 0


async def test_a_model_outside_the_policy_is_denied(tmp_path: Path) -> None:
    result, *_ = await _provider_run(tmp_path, "hello", CompleteRequest(prompt="hi"), models=["claude-haiku-4-5"])
    assert isinstance(result, PolicyDenied)


async def test_an_unreachable_model_api_is_a_model_error_and_the_call_is_settled_free(tmp_path: Path) -> None:
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings = Settings.load(
        {}, data_dir=str(tmp_path), upstream_url=f"http://127.0.0.1:{port}", upstream_api_key="sk-ant-api03-" + secrets.token_urlsafe(24)
    )
    calls: list[CallRecord] = []
    async with AnthropicProvider(settings) as provider:
        with pytest.raises(ModelError):
            await provider.complete(CompleteRequest(prompt="hi"), make_policy(kind="complete"), on_call=calls.append)
    [call] = calls  # settled and reported although nothing reached the upstream
    assert call.status == 502 and call.cost_usd == 0 and not call.charged_worst_case
