"""First start of ``taskbus up``: the data dir, the job secret, the profiles, an admin key.

The admin key is created only when no live key of the ``admin`` profile exists; its
plaintext is returned to be shown once and is never stored (the store keeps a hash).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from bus import AuditNotice, Settings, load_or_create_job_secret, private_dir
from profiles import NoticeBuffer, Store

logger = logging.getLogger(__name__)

ADMIN_PROFILE = "admin"
ADMIN_KEY_NAME = "admin (taskbus up)"
DEMO_PROFILE = "developer"
DEMO_KEY_NAME = "demo (scripts/up)"
NEW_KEY_HINT = "taskbus keys create --profile admin --name me"


@dataclass(frozen=True, kw_only=True)
class FirstRun:
    created_data_dir: bool
    admin_key: str | None
    """Plaintext of a key made now (show it once), or None when an admin key exists."""
    admin_prefix: str
    notices: list[AuditNotice]
    """Key-creation notices to publish once the bus is up."""


def make_dirs(settings: Settings) -> bool:
    """Create the data dir (0700) and its logs folder; True when the data dir is new."""
    data = settings.data_path
    created = not data.exists()
    private_dir(data, tighten=created)
    private_dir(data / "logs")
    return created


async def prepare(settings: Settings) -> FirstRun:
    """Everything a start needs before any child runs. Idempotent."""
    created = make_dirs(settings)
    load_or_create_job_secret(settings)
    buffer = NoticeBuffer()
    now = datetime.now(timezone.utc)
    async with Store.for_settings(settings, actor="taskbus-up", notify=buffer) as store:  # seeds profiles
        live = [
            k for k in await store.list_keys(profile=ADMIN_PROFILE)
            if k.revoked_at is None and (k.expires_at is None or k.expires_at > now)
        ]
        if live:
            return FirstRun(created_data_dir=created, admin_key=None, admin_prefix=live[0].prefix, notices=[])
        plaintext, record = await store.create_key(ADMIN_PROFILE, name=ADMIN_KEY_NAME)
    logger.info("created admin key %s", record.prefix)
    return FirstRun(created_data_dir=created, admin_key=plaintext, admin_prefix=record.prefix, notices=buffer.notices)


async def demo_key(settings: Settings, *, lifetime_s: float = 3600.0) -> tuple[str, list[AuditNotice]]:
    """A short-lived key of the developer profile for the demo (expires in an hour)."""
    buffer = NoticeBuffer()
    expires = datetime.now(timezone.utc) + timedelta(seconds=lifetime_s)
    async with Store.for_settings(settings, actor="taskbus-demo", notify=buffer) as store:
        plaintext, _ = await store.create_key(DEMO_PROFILE, name=DEMO_KEY_NAME, expires_at=expires)
    return plaintext, buffer.notices
