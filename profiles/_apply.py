"""Applying a TOML file of profiles: what changes, field by field (pure; the Store writes).

Apply is declarative and idempotent: profiles in the file are created or made equal to
the file (fields left out take their defaults); applying the same file twice changes
nothing; profiles not in the file are left alone (deleting is explicit).
"""

from __future__ import annotations

from typing import Any

import msgspec

from ._profiles import PROFILE_FIELDS, Profile


class ApplyResult(msgspec.Struct, frozen=True, kw_only=True):
    created: list[str] = []
    updated: dict[str, list[str]] = {}
    """Profile name -> the fields that changed."""
    unchanged: list[str] = []

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)


def diff_profiles(old: Profile, new: Profile) -> dict[str, tuple[Any, Any]]:
    """Fields whose value differs: name -> (old, new)."""
    out: dict[str, tuple[Any, Any]] = {}
    for field in PROFILE_FIELDS:
        before, after = getattr(old, field), getattr(new, field)
        if before != after:
            out[field] = (msgspec.to_builtins(before), msgspec.to_builtins(after))
    return out


def plan_apply(existing: dict[str, Profile], incoming: dict[str, Profile]) -> tuple[ApplyResult, list[Profile]]:
    """The result to report and the profiles to write."""
    created: list[str] = []
    updated: dict[str, list[str]] = {}
    unchanged: list[str] = []
    writes: list[Profile] = []
    for name in sorted(incoming):
        profile = incoming[name]
        old = existing.get(name)
        if old is None:
            created.append(name)
            writes.append(profile)
            continue
        changes = diff_profiles(old, profile)
        if changes:
            updated[name] = sorted(changes)
            writes.append(profile)
        else:
            unchanged.append(name)
    return ApplyResult(created=created, updated=updated, unchanged=unchanged), writes
