"""Creating what a deployment needs on NATS: the three streams, the artifacts Object Store,
the cache and job-claims KV buckets, the catalog, and the control plane's buckets, each
with the deployment's replicas. Every function is idempotent: every process calls them at
start-up."""

from __future__ import annotations

from typing import Any

from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError

from ._catalog import Catalog
from ._errors import BusError
from ._streams import ensure_kv, ensure_object_store, ensure_stream, object_stream, patient
from ._subjects import Subjects

DAY = 86_400
DEFAULT_TASK_RETENTION_S = 30.0 * DAY
"""The task registry's retention when the caller passes none (TASKBUS_TASK_RETENTION_DAYS's default)."""
LEDGER_MIN_AGE_S = 32.0 * DAY
"""The ledger's entries outlive any budget month (31 days) they count in."""
JS_INSUFFICIENT_STORAGE = 10047
"""JetStream's error code when a stream's max_bytes cannot be reserved."""


def stream_configs(
    subjects: Subjects,
    *,
    dedupe_window_s: float = 600,
    events_max_age_s: float = 30 * DAY,
    audit_max_age_s: float = 365 * DAY,
    max_msg_size: int = 8 * 1024 * 1024,
) -> list[StreamConfig]:
    return [
        StreamConfig(
            name=subjects.jobs_stream,
            subjects=[subjects.jobs_all()],
            retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE,
            duplicate_window=dedupe_window_s,
            max_msg_size=max_msg_size,
            discard=DiscardPolicy.NEW,
        ),
        StreamConfig(
            name=subjects.events_stream,
            subjects=[subjects.events_all()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=events_max_age_s,
            duplicate_window=120,
            max_msg_size=max_msg_size,
        ),
        StreamConfig(
            name=subjects.audit_stream,
            subjects=[subjects.audit_all()],
            retention=RetentionPolicy.LIMITS,
            storage=StorageType.FILE,
            max_age=audit_max_age_s,
            duplicate_window=120,
        ),
    ]


async def _ensure_artifacts(
    js: JetStreamContext,
    subjects: Subjects,
    *,
    max_bytes: int | None,
    max_age_s: float | None,
    replicas: int = 1,
    update: bool = True,
) -> None:
    """The artifacts Object Store with its size and age limits (discard new: a full bucket
    refuses new objects rather than cutting chunks out of stored ones)."""
    try:
        _, created = await ensure_object_store(
            js,
            subjects.artifacts_bucket,
            ObjectStoreConfig(storage=StorageType.FILE, description="taskbus task artifacts", max_bytes=max_bytes, ttl=max_age_s),
            replicas=replicas,
            update=update,
        )
        if created or not update:
            return

        async def apply_limits() -> None:
            info = await js.stream_info(object_stream(subjects.artifacts_bucket))
            config, changed = info.config, False
            if max_bytes is not None and config.max_bytes != max_bytes:
                config.max_bytes, changed = max_bytes, True
            if max_age_s is not None and config.max_age != max_age_s:
                config.max_age, changed = max_age_s, True
            if changed:
                await js.update_stream(config)

        await patient(apply_limits, f"the limits of the Object Store {subjects.artifacts_bucket}")
    except APIError as exc:
        if exc.err_code == JS_INSUFFICIENT_STORAGE:
            raise BusError(
                f"JetStream cannot reserve {max_bytes} bytes for the artifacts Object Store "
                f"{subjects.artifacts_bucket!r} (insufficient storage): lower TASKBUS_ARTIFACTS_STORE_MAX_BYTES "
                "or free disk space for the NATS store"
            ) from None
        raise


async def ensure_streams(
    js: JetStreamContext,
    subjects: Subjects,
    *,
    events_max_age_s: float = 30 * DAY,
    dedupe_window_s: float = 600,
    artifacts_max_bytes: int | None = None,
    artifacts_max_age_s: float | None = None,
    update: bool = True,
    replicas: int = 1,
) -> None:
    """Create or update the three streams, the artifacts Object Store, the cache KV, the
    job-claims KV and (``update``) the catalog's KV and Object Store, each with ``replicas``
    (existing ones with fewer are raised to it).

    Idempotent: safe to call from every process at start-up. The artifacts limits
    (``None``: unlimited on create, unchanged on an existing bucket) are applied to an
    existing bucket too. ``update=False`` only creates what is missing (for a NATS user
    that may read stream info but not change streams).
    """
    for config in stream_configs(subjects, events_max_age_s=events_max_age_s, dedupe_window_s=dedupe_window_s):
        await ensure_stream(js, config, replicas=replicas, update=update)
    await _ensure_artifacts(js, subjects, max_bytes=artifacts_max_bytes, max_age_s=artifacts_max_age_s, replicas=replicas, update=update)
    for bucket, ttl, description in (
        (subjects.cache_bucket, DAY, "taskbus completion cache"),
        (subjects.claims_bucket, max(events_max_age_s, DAY), "taskbus job claims: task id -> job message a runner took (replay check)"),
    ):
        await ensure_kv(
            js, KeyValueConfig(bucket=bucket, storage=StorageType.FILE, ttl=ttl, description=description), replicas=replicas, update=update
        )
    if update:  # the catalog's buckets too, so that one opened later (admission, the CLI) has the replicas
        await Catalog.open(js, subjects.catalog_bucket, replicas=replicas)


async def ensure_control_plane(
    js: JetStreamContext, subjects: Subjects, *, replicas: int = 1, task_retention_s: float | None = None
) -> dict[str, Any]:
    """The control plane's KV buckets (keys/profiles/budgets, the ledger, the task registry),
    created when missing and raised to ``replicas``. Their reads are direct gets served by
    the stream, not JetStream API requests (which queue behind consumer creations under
    load). Not part of ``ensure_streams``: the runner and audit users are denied these
    buckets; ``profiles.Store`` (server, CLI) calls this.

    Retention (the bucket's max age): the task registry keeps an entry ``task_retention_s``
    after its last write; the ledger at least ``LEDGER_MIN_AGE_S``, so an account's budget
    entry only expires once its month is over (an account writes it on every admission;
    one idle that long starts its new periods at zero anyway) and a task's reservation
    record lives as long as its task's record. The control bucket (keys, profiles,
    overrides) never expires. ``task_retention_s`` is applied to existing buckets too;
    None creates missing buckets with ``DEFAULT_TASK_RETENTION_S`` and leaves existing
    ones as they are (a caller that does not know the deployment's setting)."""
    if task_retention_s is not None and task_retention_s <= 0:
        raise ValueError(f"task retention must be positive (got {task_retention_s})")
    retention = DEFAULT_TASK_RETENTION_S if task_retention_s is None else task_retention_s
    return {
        bucket: await ensure_kv(
            js,
            KeyValueConfig(bucket=bucket, storage=StorageType.FILE, history=1, description=description, direct=True, ttl=ttl),
            replicas=replicas,
            apply_ttl=task_retention_s is not None,
        )
        for bucket, description, ttl in (
            (subjects.control_bucket, "taskbus control plane: API key hashes, profiles, budget overrides", None),
            (
                subjects.ledger_bucket,
                "taskbus ledger: budget entries per account, rate windows, reservations",
                max(retention, LEDGER_MIN_AGE_S),
            ),
            (subjects.tasks_bucket, "taskbus task registry", retention),
        )
    }
