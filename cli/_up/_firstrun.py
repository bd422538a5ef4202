"""First start of ``taskbus up``: the data dir, the job secret, the profiles, an admin key.

The control plane (profiles, keys) lives in NATS, which ``taskbus up`` itself starts as a
child later: with the embedded NATS, ``prepare`` opens the same JetStream store for a
moment on a loopback port with the stack's users (as the ``server`` user), seeds it,
and stops it. The admin key is created only when no live key of the ``admin`` profile
exists; its plaintext is returned to be shown once and is never stored (the store keeps
a hash). A ``taskbus.db`` left by a taskbus before 0.6 is imported on the way (once;
``taskbus migrate`` does the same by hand) and the report is returned.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import msgspec

from bus import (
    AuditNotice,
    BusError,
    EmbeddedNats,
    Settings,
    TaskbusError,
    TaskRequest,
    credentials_path,
    load_or_create_job_secret,
    new_task_id,
    private_dir,
    safe_url,
    server_authorization,
)
from profiles import DB_NAME, ImportReport, NoticeBuffer, Store, import_database, offered_models, resolve_policy

from ._demo import DEMO_DESCRIPTION, DEMO_MAX_COST_USD, DEMO_TIMEOUT_S
from ._supervisor import UpError

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
    imported: ImportReport | None = None
    """What was imported from an old ``taskbus.db`` at this start (None: nothing to import
    or imported before)."""


def make_dirs(settings: Settings) -> bool:
    """Create the data dir (0700) and its logs folder; True when the data dir is new."""
    data = settings.data_path
    created = not data.exists()
    private_dir(data, tighten=created)
    private_dir(data / "logs")
    return created


@asynccontextmanager
async def control_plane(settings: Settings) -> AsyncIterator[Settings]:
    """Settings that reach the stack's NATS before the stack runs: the configured one, or
    the embedded NATS's store opened briefly (loopback, the stack's users, as ``server``)."""
    if settings.nats_url:
        yield settings
        return
    data = settings.data_path
    server = EmbeddedNats(
        data / "nats", authorization=server_authorization(data, settings.subject_prefix), log_path=data / "logs" / "nats-firstrun.log"
    )
    async with server:
        yield msgspec.structs.replace(settings, nats_url=server.url, nats_credentials=str(credentials_path(data, "server")))


async def prepare(settings: Settings, *, runner_id: str | None = None) -> FirstRun:
    """Everything a start needs before any child runs. Idempotent. With ``runner_id``,
    that runner is seeded with the demo's task class, so its first demo finds a warm
    agent (``seed_warm_classes``: never over the runner's own record)."""
    created = make_dirs(settings)
    load_or_create_job_secret(settings)
    buffer = NoticeBuffer()
    now = datetime.now(UTC)
    imported: ImportReport | None = None
    async with control_plane(settings) as reach:
        store = Store.for_settings(reach, actor="taskbus-up", notify=buffer)
        try:
            await store.connect()
        except BusError as exc:
            if not settings.nats_url:
                raise
            raise UpError(
                f"the NATS server in TASKBUS_NATS_URL ({safe_url(settings.nats_url)}) does not answer: "
                f"start it, or unset TASKBUS_NATS_URL to let taskbus up run its own ({exc})"  # the cause: TLS, a refused user
            ) from exc
        async with store:  # seeds profiles
            if runner_id is not None:
                await seed_demo_class(store, settings, runner_id)
            old = settings.data_path / DB_NAME
            if old.is_file():
                report = await import_database(store, old)
                if not report.already:
                    imported = report
                    logger.info("imported %s: %s", old, report.imported)
            live = [
                k
                for k in await store.list_keys(profile=ADMIN_PROFILE)
                if k.revoked_at is None and (k.expires_at is None or k.expires_at > now)
            ]
            if live:
                return FirstRun(created_data_dir=created, admin_key=None, admin_prefix=live[0].prefix, notices=[], imported=imported)
            plaintext, record = await store.create_key(ADMIN_PROFILE, name=ADMIN_KEY_NAME)
    logger.info("created admin key %s", record.prefix)
    return FirstRun(created_data_dir=created, admin_key=plaintext, admin_prefix=record.prefix, notices=buffer.notices, imported=imported)


async def seed_demo_class(store: Store, settings: Settings, runner_id: str) -> None:
    """Write the demo task's class as ``runner_id``'s warm classes if it has none yet."""
    from sandbox import seed_warm_classes, warm_demand_file  # noqa: PLC0415 (the CLI loads sandbox only for the commands that use it: start-up cost)

    path = warm_demand_file(settings.data_path, runner_id)
    if path.exists():
        return
    try:
        profile = await store.get_profile(DEMO_PROFILE)
        request = TaskRequest(description=DEMO_DESCRIPTION, timeout_s=DEMO_TIMEOUT_S, max_cost_usd=DEMO_MAX_COST_USD)
        models = offered_models(profile, settings)
        policy = resolve_policy(
            profile, request, task_id=new_task_id(), key_id="warm-seed", model=models[0] if models else "", settings=settings
        )
    except TaskbusError as exc:  # an operator may have changed the profile: the demo then starts cold
        logger.info("no warm class seeded for the demo: %s", exc.describe())
        return
    if seed_warm_classes(path, [policy]):
        logger.info("seeded runner %s with the demo's task class (warm agent before the first task)", runner_id)


async def demo_key(settings: Settings, *, lifetime_s: float = 3600.0) -> tuple[str, list[AuditNotice]]:
    """A short-lived key of the developer profile for the demo (expires in an hour)."""
    buffer = NoticeBuffer()
    expires = datetime.now(UTC) + timedelta(seconds=lifetime_s)
    async with Store.for_settings(settings, actor="taskbus-demo", notify=buffer) as store:
        plaintext, _ = await store.create_key(DEMO_PROFILE, name=DEMO_KEY_NAME, expires_at=expires)
    return plaintext, buffer.notices
