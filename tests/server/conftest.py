"""Server test helpers: the real stack (NATS, profiles Store, dispatcher, gateway) inside a test.

The stack is an async context manager used *inside* each test (not a yield fixture):
its TaskGroups must be entered and exited by the same task, and an MCP ``Client``
cannot live in a pytest-asyncio yield fixture either.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from server_kit import e2e_model_and_runner

from bus import AuditNotice, Bus, Settings, Subjects, decode_notice, load_or_create_job_secret
from profiles import Store
from server._dispatch import Dispatcher
from server._submit_gateway import SubmitGateway


@dataclass
class Stack:
    settings: Settings
    bus: Bus
    store: Store
    dispatcher: Dispatcher
    gateway: SubmitGateway
    notices: list[AuditNotice] = field(default_factory=list)

    async def key(self, profile: str = "developer", **budget: Any) -> str:
        if budget:
            await self.store.set_budget(profile=profile, **budget)
        plaintext, _ = await self.store.create_key(profile)
        return plaintext


@contextlib.asynccontextmanager
async def server_stack(settings: Settings) -> AsyncIterator[Stack]:
    async with await Bus.open(settings.nats_url, Subjects(settings.subject_prefix), name="test-server") as bus:
        await bus.ensure_streams()
        notices: list[AuditNotice] = []

        async def on_notice(msg: Any) -> None:
            notices.append(decode_notice(msg.data))

        sub = await bus.nc.subscribe(bus.subjects.audit_all(), cb=on_notice)
        async with Store.for_settings(settings, bus=bus) as store:
            async with Dispatcher(settings, bus, store, secret=load_or_create_job_secret(settings)) as dispatcher:
                async with SubmitGateway(dispatcher) as gateway:
                    yield Stack(settings, bus, store, dispatcher, gateway, notices)
        await sub.unsubscribe()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def make_stack():
    """``async with make_stack(settings) as stack:`` inside the test."""
    return server_stack


# --------------------------------------------------------------------------- end to end (real runner)


from ci_guard import require  # noqa: E402  (kept importable as server conftest.require)


@pytest.fixture
def e2e_settings(settings: Settings, tmp_path, require_bwrap, require_claude) -> Settings:
    """Settings for end-to-end tests: bwrap, the real Claude Code CLI, the shared sandbox image."""
    import msgspec

    try:
        from sandbox import Runner  # noqa: F401
    except ImportError:
        require(False, "sandbox.Runner", "the runner package is not built yet")
    images = Settings.load({}).image_cache_path / "images"
    require(images.is_dir(), "the sandbox image", "run `taskbus sandbox build-image`")
    data = settings.data_path
    data.mkdir(parents=True, exist_ok=True)
    (data / "images").symlink_to(images)
    return msgspec.structs.replace(settings, sandbox_backend="bwrap", claude_path=str(require_claude))


@contextlib.asynccontextmanager
async def e2e_stack(settings: Settings, *, slots: int = 4) -> AsyncIterator[Stack]:
    """The model, a real runner and the server stack."""
    async with e2e_model_and_runner(settings, slots=slots) as with_model:
        async with server_stack(with_model) as stack:
            yield stack


@pytest.fixture
def make_e2e():
    return e2e_stack
