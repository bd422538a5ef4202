"""Helpers shared by the server tests (a uniquely named module: importable from any test)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from bus import Settings


async def sandboxes_left(settings: Settings) -> list[Any]:
    from sandbox._sandboxes import get_backend

    backend = get_backend("bwrap", settings)
    try:
        return await backend.list()
    finally:
        await backend.close()


@contextlib.asynccontextmanager
async def e2e_model_and_runner(settings: Settings, *, slots: int = 4) -> AsyncIterator[Settings]:
    """Scripted model (echo by default; ``[script:NAME]`` markers pick a script) and a real
    runner with bwrap; yields the settings pointing at that model."""
    import msgspec

    from sandbox import Runner
    from sandbox._scripted import ScriptedModelServer

    async with ScriptedModelServer() as model:
        settings = msgspec.structs.replace(settings, upstream_url=model.url)
        async with Runner(settings, backend="bwrap", slots=slots):
            yield settings


def require_or_skip(component: str, fix: str) -> None:
    """A missing component: skip locally, FAIL under CI=true (a green CI means it ran)."""
    from ci_guard import require

    require(False, component, fix)
