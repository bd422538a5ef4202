"""Changing the catalog (``taskbus agents|skills add|rm``) and reading it for admission.

Every change is announced as an ``AuditNotice`` (kind ``catalog_added``,
``catalog_replaced`` or ``catalog_removed``, with the name and hashes) on the same
connection, after it is stored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from bus import AuditNotice, Bus, BusError, Catalog, CatalogBundle, CatalogEntry, CatalogLimits, TaskbusError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Change:
    entry: CatalogEntry
    action: str
    """added, replaced or unchanged."""
    previous_sha256: str | None = None


async def _announce(bus: Bus, notice: AuditNotice) -> None:
    try:
        await bus.publish(bus.subjects.audit(notice.kind), notice, attempts=3)
    except TaskbusError as exc:
        raise BusError(
            f"the catalog change is stored, but its audit notice ({notice.kind}) could not be "
            f"published: {exc.describe()}; the audit log lacks it"
        ) from None


async def open_catalog(bus: Bus, *, create: bool = True) -> Catalog:
    return await Catalog.open(bus.js, bus.subjects.catalog_bucket, create=create, replicas=bus.replicas)


async def add_bundles(bus: Bus, bundles: list[CatalogBundle], *, limits: CatalogLimits, actor: str) -> list[Change]:
    """Store each (already validated) bundle as the current version and audit it."""
    catalog = await open_catalog(bus)
    changes = []
    for bundle in bundles:
        entry, previous = await catalog.put(bundle, limits=limits, actor=actor)
        if previous is None:
            change = Change(entry, "added")
        elif previous.sha256 == entry.sha256:
            change = Change(entry, "unchanged", previous.sha256)
        else:
            change = Change(entry, "replaced", previous.sha256)
        if change.action != "unchanged":
            detail = {"catalog_kind": entry.kind, "name": entry.name, "sha256": entry.sha256, "files": entry.files, "size": entry.size}
            if change.previous_sha256:
                detail["previous_sha256"] = change.previous_sha256
            await _announce(bus, AuditNotice(kind=f"catalog_{change.action}", actor=actor, detail=detail))
        changes.append(change)
    return changes


async def remove_entry(bus: Bus, kind: str, name: str, *, actor: str) -> CatalogEntry:
    catalog = await open_catalog(bus)
    entry = await catalog.remove(kind, name)
    await _announce(
        bus, AuditNotice(kind="catalog_removed", actor=actor, detail={"catalog_kind": kind, "name": name, "sha256": entry.sha256})
    )
    return entry


async def current_entries(bus: Bus) -> list[CatalogEntry]:
    """Every current entry (empty when nothing was ever added)."""
    catalog = await open_catalog(bus)
    return await catalog.entries()
