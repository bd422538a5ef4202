"""API keys: generation, hashing, records, and the key operations on a connection.

A key is ``tb_`` + 32 random bytes (url-safe base64, 43 characters). It is shown once;
the database keeps its SHA-256 hex digest and a display prefix (``tb_`` + the first 8
characters) that names the key in listings, logs and policies. Authentication looks the
row up by digest and compares digests with ``hmac.compare_digest``.

Rotation creates a new key for the same profile and account and lets the old one work
until ``grace_until``. Budgets belong to the *account* (the first key of a rotation
chain), so rotating never resets spend.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from datetime import datetime, timedelta, timezone
from typing import Any

import aiosqlite
import msgspec

from bus import AuthError, InvalidInput, KeyExpired, KeyRevoked, NotFound

KEY_PREFIX = "tb_"
DISPLAY_CHARS = 8
_KEY_SHAPE = re.compile(r"^tb_[A-Za-z0-9_-]{43}$")


class KeyRecord(msgspec.Struct, frozen=True, kw_only=True):
    """What the store knows about a key (never the key itself)."""

    prefix: str
    """Display id, e.g. ``tb_AbCd1234``; the ``key_id`` of policies and ledger rows."""
    profile: str
    name: str | None = None
    created_at: datetime
    expires_at: datetime | None = None
    revoked_at: datetime | None = None
    account: str = ""
    """Prefix of the first key of the rotation chain; budgets are counted per account."""
    replaced_by: str | None = None
    grace_until: datetime | None = None

    def state(self, now: datetime) -> str:
        if self.revoked_at is not None:
            return "revoked"
        if self.grace_until is not None:
            return "rotated" if now < self.grace_until else "expired"
        if self.expires_at is not None and now >= self.expires_at:
            return "expired"
        return "active"


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def display_prefix(plaintext: str) -> str:
    return plaintext[: len(KEY_PREFIX) + DISPLAY_CHARS]


def _ts(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, timezone.utc)


def record_from_row(row: Any) -> KeyRecord:
    return KeyRecord(
        prefix=row["prefix"],
        profile=row["profile"],
        name=row["name"],
        created_at=_ts(row["created_at"]),  # type: ignore[arg-type]
        expires_at=_ts(row["expires_at"]),
        revoked_at=_ts(row["revoked_at"]),
        account=row["account"] or row["prefix"],
        replaced_by=row["replaced_by"],
        grace_until=_ts(row["grace_until"]),
    )


_DURATION = re.compile(r"^(\d+)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """``90s``, ``15m``, ``1h``, ``30d``, ``2w`` to seconds."""
    match = _DURATION.match(text.strip().lower())
    if not match:
        raise InvalidInput(f"duration {text!r} not understood; use a number and s, m, h, d or w (e.g. 1h, 30d)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_expiry(text: str, now: datetime) -> datetime:
    """A duration from now (``30d``) or an ISO 8601 date/time (UTC if no offset)."""
    try:
        return now + timedelta(seconds=parse_duration(text))
    except InvalidInput:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(
            f"expiry {text!r} not understood; give a duration (30d, 12h) or an ISO date (2027-01-31)"
        ) from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    if when <= now:
        raise InvalidInput(f"expiry {when.isoformat()} is in the past; give a future date or a duration")
    return when


# --------------------------------------------------------------------------- operations


async def fetch_key(db: aiosqlite.Connection, prefix: str) -> KeyRecord:
    async with db.execute("SELECT * FROM api_keys WHERE prefix = ?", (prefix,)) as cur:
        row = await cur.fetchone()
    if row is None:
        raise NotFound(f"no key with prefix {prefix!r}; `taskbus keys list` shows them", prefix=prefix)
    return record_from_row(row)


async def insert_key(
    db: aiosqlite.Connection,
    *,
    profile: str,
    name: str | None,
    expires_at: datetime | None,
    now: datetime,
    account: str | None = None,
) -> tuple[str, KeyRecord]:
    for _ in range(5):  # a display-prefix collision is ~2^-48; retry rather than fail
        plaintext = new_key()
        prefix = display_prefix(plaintext)
        async with db.execute("SELECT 1 FROM api_keys WHERE prefix = ?", (prefix,)) as cur:
            if await cur.fetchone() is None:
                break
    else:  # pragma: no cover - would need five 48-bit collisions in a row
        raise RuntimeError("could not generate a unique key prefix")
    await db.execute(
        "INSERT INTO api_keys (prefix, hash, name, profile, created_at, expires_at, account)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (
            prefix,
            hash_key(plaintext),
            name,
            profile,
            now.timestamp(),
            expires_at.timestamp() if expires_at else None,
            account or prefix,
        ),
    )
    return plaintext, await fetch_key(db, prefix)


async def authenticate(db: aiosqlite.Connection, plaintext: str, now: datetime) -> KeyRecord:
    if not isinstance(plaintext, str) or not plaintext:
        raise AuthError("no API key given")
    if not _KEY_SHAPE.match(plaintext):
        raise AuthError("the API key is not a taskbus key (expected 'tb_' and 43 characters)")
    digest = hash_key(plaintext)
    async with db.execute("SELECT * FROM api_keys WHERE hash = ?", (digest,)) as cur:
        row = await cur.fetchone()
    # compare even on a miss so that both paths do the same work
    stored = row["hash"] if row is not None else "0" * 64
    if row is None or not hmac.compare_digest(stored, digest):
        raise AuthError("unknown API key")
    record = record_from_row(row)
    if record.revoked_at is not None:
        raise KeyRevoked(
            f"API key {record.prefix} was revoked at {record.revoked_at.isoformat()}", prefix=record.prefix
        )
    if record.grace_until is not None and now >= record.grace_until:
        raise KeyExpired(
            f"API key {record.prefix} was rotated to {record.replaced_by}; its grace period "
            f"ended at {record.grace_until.isoformat()}",
            prefix=record.prefix,
        )
    if record.expires_at is not None and now >= record.expires_at:
        raise KeyExpired(
            f"API key {record.prefix} expired at {record.expires_at.isoformat()}", prefix=record.prefix
        )
    return record


async def revoke(db: aiosqlite.Connection, prefix: str, now: datetime) -> tuple[KeyRecord, bool]:
    """Returns the record and whether this call changed it (revoking twice is a no-op)."""
    record = await fetch_key(db, prefix)
    if record.revoked_at is not None:
        return record, False
    await db.execute("UPDATE api_keys SET revoked_at = ? WHERE prefix = ?", (now.timestamp(), prefix))
    return await fetch_key(db, prefix), True


async def rotate(
    db: aiosqlite.Connection, prefix: str, grace_s: float, now: datetime
) -> tuple[str, KeyRecord, KeyRecord]:
    """New key for the same profile and account; the old one works for ``grace_s`` more."""
    if grace_s < 0:
        raise InvalidInput(f"grace period must not be negative (got {grace_s}s)")
    old = await fetch_key(db, prefix)
    if old.revoked_at is not None:
        raise InvalidInput(f"key {prefix} is revoked; create a new key instead of rotating it")
    if old.replaced_by is not None:
        raise InvalidInput(f"key {prefix} was already rotated to {old.replaced_by}; rotate that one")
    expires_at = None
    if old.expires_at is not None:  # keep the key's lifetime, counted from now
        expires_at = now + (old.expires_at - old.created_at)
    plaintext, new = await insert_key(
        db, profile=old.profile, name=old.name, expires_at=expires_at, now=now, account=old.account
    )
    grace_until = now + timedelta(seconds=grace_s)
    await db.execute(
        "UPDATE api_keys SET replaced_by = ?, grace_until = ? WHERE prefix = ?",
        (new.prefix, grace_until.timestamp(), prefix),
    )
    return plaintext, new, await fetch_key(db, prefix)


async def list_keys(db: aiosqlite.Connection, *, profile: str | None = None) -> list[KeyRecord]:
    sql = "SELECT * FROM api_keys"
    args: tuple[Any, ...] = ()
    if profile is not None:
        sql += " WHERE profile = ?"
        args = (profile,)
    async with db.execute(sql + " ORDER BY created_at, prefix", args) as cur:
        return [record_from_row(row) for row in await cur.fetchall()]
