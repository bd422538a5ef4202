"""The in-sandbox forwarder script in front of the gateway.

It runs as a real subprocess with ``python3 -I -S`` (no site-packages at all), which
also proves that it needs nothing but the standard library."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from pathlib import Path

import anthropic
import httpx

from .conftest import MODEL, body, open_stack, script


@contextlib.asynccontextmanager
async def forwarder(script: Path, socket_path: Path) -> AsyncIterator[int]:
    proc = await asyncio.create_subprocess_exec(
        "python3",
        "-I",
        "-S",
        str(script),
        "--listen",
        "127.0.0.1:0",
        "--socket",
        str(socket_path),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        start_new_session=True,
    )
    try:
        assert proc.stdout is not None
        async with asyncio.timeout(10):
            line = (await proc.stdout.readline()).decode()
        assert line.startswith("ready 127.0.0.1:"), line
        yield int(line.rsplit(":", 1)[1])
    finally:
        if proc.returncode is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(5):
                    await proc.wait()
            except TimeoutError:
                os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
    assert proc.returncode == 0, await proc.stderr.read() if proc.stderr else b""


async def test_the_official_sdk_streams_through_forwarder_and_gateway(tmp_path: Path, forwarder_path: Path) -> None:
    async with open_stack(tmp_path, "hello") as s, forwarder(forwarder_path, s.socket_path) as port:
        client = anthropic.AsyncAnthropic(base_url=f"http://127.0.0.1:{port}", api_key=s.placeholder, max_retries=0)
        async with client.messages.stream(model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "hi"}]) as stream:
            deltas = [text async for text in stream.text_stream]
            final = await stream.get_final_message()
        plain = await client.messages.create(model=MODEL, max_tokens=200, messages=[{"role": "user", "content": "hi"}])
        await client.close()
    assert "".join(deltas) == "Hello from the scripted model." == plain.content[0].text
    streamed_call, json_call = s.calls
    assert streamed_call.usage.output_tokens == final.usage.output_tokens
    assert json_call.usage.input_tokens == plain.usage.input_tokens


async def test_the_forwarder_serves_many_concurrent_connections(tmp_path: Path, forwarder_path: Path) -> None:
    async with open_stack(tmp_path, "hello") as s, forwarder(forwarder_path, s.socket_path) as port:
        limits = httpx.Limits(max_connections=60, max_keepalive_connections=0)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", limits=limits, timeout=30) as client:
            responses = await asyncio.gather(
                *(client.post("/v1/messages", json=body(f"n{i}", stream=i % 2 == 0), headers=s.auth) for i in range(60))
            )
    assert [r.status_code for r in responses] == [200] * 60
    assert len(s.calls) == 60


async def test_a_half_closed_request_still_gets_its_whole_response(tmp_path: Path, forwarder_path: Path) -> None:
    async with open_stack(tmp_path, "hello") as s, forwarder(forwarder_path, s.socket_path) as port:
        payload = httpx.Request("POST", "http://x/v1/messages", json=body(stream=True), headers=s.auth).read()
        head = (
            f"POST /v1/messages HTTP/1.1\r\nhost: x\r\nx-api-key: {s.placeholder}\r\n"
            f"content-type: application/json\r\ncontent-length: {len(payload)}\r\nconnection: close\r\n\r\n"
        ).encode()
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(head + payload)
        writer.write_eof()  # half-close: nothing more from us, but we still read
        async with asyncio.timeout(10):
            response = await reader.read()  # until the forwarder passes on the gateway's EOF
        writer.close()
    assert response.startswith(b"HTTP/1.1 200")
    assert b"message_stop" in response


async def test_a_dead_gateway_closes_the_connection_and_the_forwarder_keeps_serving(tmp_path: Path, forwarder_path: Path) -> None:
    missing = tmp_path / "nothing.sock"
    async with forwarder(forwarder_path, missing) as port:
        for _ in range(2):
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            async with asyncio.timeout(5):
                with contextlib.suppress(ConnectionError):
                    assert await reader.read() == b""
            writer.close()


async def test_the_forwarder_refuses_to_listen_beyond_loopback(forwarder_path: Path, tmp_path: Path) -> None:
    proc = await asyncio.create_subprocess_exec(
        "python3",
        "-I",
        "-S",
        str(forwarder_path),
        "--listen",
        "0.0.0.0:0",
        "--socket",
        str(tmp_path / "s"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    async with asyncio.timeout(10):
        _out, err = await proc.communicate()
    assert proc.returncode == 2
    assert b"not a loopback address" in err


async def test_a_stream_through_the_forwarder_arrives_as_it_is_produced(tmp_path: Path, forwarder_path: Path) -> None:
    slow = script('chunk_chars = 4\n[[turns]]\ntext = "one two three four five six"\nchunk_delay_ms = 150\n')
    async with open_stack(tmp_path, slow) as s, forwarder(forwarder_path, s.socket_path) as port:
        arrivals: list[float] = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
            async with client.stream("POST", "/v1/messages", json=body(stream=True), headers=s.auth) as response:
                start = time.monotonic()
                async for chunk in response.aiter_raw():
                    if chunk:
                        arrivals.append(time.monotonic() - start)
    assert len(arrivals) >= 4
    assert arrivals[-1] - arrivals[0] >= 0.5
