"""Installing a task's catalog agents and skills: the exact versions its signed Policy pins."""

from __future__ import annotations

import asyncio

from bus import Bus, BusError, Catalog, Policy, catalog_home_files

FETCH_TIMEOUT_S = 30.0


async def catalog_files(bus: Bus, policy: Policy, *, timeout: float = FETCH_TIMEOUT_S) -> dict[str, bytes]:
    """The files (``agents/<name>.md``, ``skills/<name>/...``, relative to ~/.claude, as
    ``SandboxSpec.catalog_files`` takes them: installed read-only) of every entry
    ``policy.catalog`` pins, each fetched by its hash and checked against it.
    A missing or altered entry is a BusError: the task fails rather than runs without it."""
    try:
        async with asyncio.timeout(timeout):
            catalog = await Catalog.open(bus.js, bus.subjects.catalog_bucket, create=False)
            bundles = [await catalog.fetch(ref) for ref in policy.catalog]
    except TimeoutError:
        raise BusError(f"fetching the task's catalog entries took over {timeout:g}s") from None
    return {rel.removeprefix(".claude/"): data for rel, data in catalog_home_files(bundles).items()}
