"""The gateway when things go wrong: dead upstream, failed count_tokens, shutdown mid-stream, oversized bodies."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import httpx
import pytest

from bus import Settings
from sandbox._gateway import (
    Meter,
    MeteredModel,
    ModelGateway,
    PriceTable,
    Upstream,
    encode_body,
    new_placeholder_key,
)

from .conftest import body, make_policy, open_stack, script


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_an_unreachable_upstream_gives_502_and_costs_nothing(tmp_path: Path) -> None:
    settings = Settings.load(
        {}, data_dir=str(tmp_path), upstream_url=f"http://127.0.0.1:{closed_port()}", upstream_api_key="sk-ant-real-000000000000"
    )
    placeholder = new_placeholder_key()
    calls = []
    async with ModelGateway(settings, make_policy(), tmp_path / "run" / "m.sock", placeholder, on_call=calls.append) as gw:
        transport = httpx.AsyncHTTPTransport(uds=str(tmp_path / "run" / "m.sock"))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            response = await client.post("/v1/messages", json=body(), headers={"x-api-key": placeholder})
    assert response.status_code == 502
    assert response.json()["error"]["type"] == "api_error" and "cannot connect" in response.json()["error"]["message"]
    assert "sk-ant-real" not in response.text
    assert gw.spent_usd == 0 and calls[0].status == 502 and not calls[0].charged_worst_case


async def test_when_count_tokens_fails_the_input_bound_is_the_body_size(tmp_path: Path) -> None:
    settings = Settings.load({}, data_dir=str(tmp_path), upstream_url=f"http://127.0.0.1:{closed_port()}")
    async with Upstream(settings) as upstream:
        metered = MeteredModel(upstream, Meter(1.0, PriceTable(settings.prices)))
        request = body("x" * 5000, max_tokens=100)
        size = len(encode_body(request))
        reservation = await metered.reserve(request, body_bytes=size, headers=upstream.headers(()))
    assert reservation.input_tokens == size
    assert reservation.max_tokens == 100


async def test_closing_the_gateway_mid_stream_charges_the_worst_case_and_reports_the_call(tmp_path: Path) -> None:
    slow = script('chunk_chars = 2\n[[turns]]\ntext = "a long and slow reply"\nchunk_delay_ms = 200\n')
    async with open_stack(tmp_path, slow) as s:
        first_bytes = asyncio.Event()

        async def read_stream() -> None:
            async with s.client.stream("POST", "/v1/messages", json=body(stream=True, max_tokens=50), headers=s.auth) as r:
                async for _ in r.aiter_raw():
                    first_bytes.set()

        reading = asyncio.create_task(read_stream())
        await asyncio.wait_for(first_bytes.wait(), 10)
        await s.gateway.aclose()  # what the runner does when the task is cancelled or times out
        with pytest.raises(httpx.HTTPError):
            await asyncio.wait_for(reading, 10)
    [call] = s.calls
    assert call.charged_worst_case and call.cost_usd > 0
    assert s.gateway.spent_usd == call.cost_usd <= 1.0


async def test_an_oversized_request_body_is_refused_with_413(tmp_path: Path) -> None:
    settings = Settings.load({}, data_dir=str(tmp_path), upstream_url=f"http://127.0.0.1:{closed_port()}")
    placeholder = new_placeholder_key()
    sock = tmp_path / "run" / "m.sock"
    async with ModelGateway(settings, make_policy(), sock, placeholder, max_body_bytes=10_000):
        async with httpx.AsyncClient(transport=httpx.AsyncHTTPTransport(uds=str(sock)), base_url="http://gw") as client:
            response = await client.post("/v1/messages", json=body("x" * 20_000), headers={"x-api-key": placeholder})
            assert response.status_code == 413
            assert response.json()["error"]["type"] == "request_too_large"
            ok = await client.get("/", headers={"x-api-key": placeholder})  # the gateway still serves
            assert ok.status_code == 200


async def test_a_request_without_max_tokens_is_refused_before_going_upstream(tmp_path: Path) -> None:
    async with open_stack(tmp_path, "hello") as s:
        request = body()
        del request["max_tokens"]
        response = await s.client.post("/v1/messages", json=request, headers=s.auth)
        assert response.status_code == 400 and "max_tokens" in response.json()["error"]["message"]
        assert s.model.requests() == []
