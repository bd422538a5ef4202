"""API keys: generation, hashing, records, and the checks that a key may be used.

A key is ``tb_`` + 32 random bytes (url-safe base64, 43 characters). It is shown once;
the control plane keeps its SHA-256 hex digest and a display prefix (``tb_`` + the first 8
characters) that names the key in listings, logs and policies. Authentication looks the
digest up in the Store's in-memory view (a dict keyed by digest: no secret-dependent
comparison loop).

Rotation creates a new key for the same profile and account and lets the old one work
until ``grace_until``. Budgets belong to the *account* (the first key of a rotation
chain), so rotating never resets spend.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec

from bus import AuthError, InvalidInput, KeyExpired, KeyRevoked, parse_duration

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
    return None if value is None else datetime.fromtimestamp(value, UTC)


def record_from_row(row: Any) -> KeyRecord:
    """A row of the pre-0.6 SQLite ``api_keys`` table (``taskbus migrate``)."""
    return KeyRecord(
        prefix=row["prefix"],
        profile=row["profile"],
        name=row["name"],
        created_at=datetime.fromtimestamp(row["created_at"], UTC),  # NOT NULL in the old schema
        expires_at=_ts(row["expires_at"]),
        revoked_at=_ts(row["revoked_at"]),
        account=row["account"] or row["prefix"],
        replaced_by=row["replaced_by"],
        grace_until=_ts(row["grace_until"]),
    )


def parse_expiry(text: str, now: datetime) -> datetime:
    """A duration from now (``30d``) or an ISO 8601 date/time (UTC if no offset)."""
    try:
        return now + timedelta(seconds=parse_duration(text))
    except InvalidInput:
        pass
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InvalidInput(f"expiry {text!r} not understood; give a duration (30d, 12h) or an ISO date (2027-01-31)") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    if when <= now:
        raise InvalidInput(f"expiry {when.isoformat()} is in the past; give a future date or a duration")
    return when


def check_shape(plaintext: object) -> str:
    """The key's digest; AuthError (never echoing the key) when it is no taskbus key."""
    if not isinstance(plaintext, str) or not plaintext:
        raise AuthError("no API key given")
    if not _KEY_SHAPE.match(plaintext):
        raise AuthError("the API key is not a taskbus key (expected 'tb_' and 43 characters)")
    return hash_key(plaintext)


def check_usable(record: KeyRecord, now: datetime) -> KeyRecord:
    """``record`` when it may be used now; KeyRevoked / KeyExpired otherwise."""
    if record.revoked_at is not None:
        raise KeyRevoked(f"API key {record.prefix} was revoked at {record.revoked_at.isoformat()}", prefix=record.prefix)
    if record.grace_until is not None and now >= record.grace_until:
        raise KeyExpired(
            f"API key {record.prefix} was rotated to {record.replaced_by}; its grace period ended at {record.grace_until.isoformat()}",
            prefix=record.prefix,
        )
    if record.expires_at is not None and now >= record.expires_at:
        raise KeyExpired(f"API key {record.prefix} expired at {record.expires_at.isoformat()}", prefix=record.prefix)
    return record


def lookup(by_hash: dict[str, KeyRecord], plaintext: str, now: datetime) -> KeyRecord:
    """Authenticate against a digest -> record map (the watched view)."""
    digest = check_shape(plaintext)
    record = by_hash.get(digest)
    if record is None:
        raise AuthError("unknown API key")
    return check_usable(record, now)
