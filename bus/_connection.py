"""Connecting to NATS, creating the streams, publishing with acks and retries."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import nats
from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import (
    DiscardPolicy,
    KeyValueConfig,
    ObjectStoreConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, NotFoundError

from ._codec import encode
from ._errors import BusError, DuplicateMessage, PublishError
from ._messages import SCHEMA_VERSION
from ._natsauth import NatsCredentials, read_credentials
from ._redact import safe_url
from ._retry import Backoff, retry_async
from ._settings import Settings
from ._subjects import Subjects

logger = logging.getLogger(__name__)

DAY = 86_400
JS_INSUFFICIENT_STORAGE = 10047
"""JetStream's error code when a stream's max_bytes cannot be reserved."""


class Bus:
    """A NATS connection with its JetStream context and the deployment's subjects.

    ``async with Bus.connect(url, subjects) as bus:`` drains the connection on exit.
    """

    def __init__(self, nc: NatsClient, subjects: Subjects) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.subjects = subjects
        self._closed = False
        self._state: dict[str, bool] = {"closing": False}

    @classmethod
    async def open(
        cls,
        url: str,
        subjects: Subjects | None = None,
        *,
        name: str = "taskbus",
        connect_timeout: float = 2.0,
        open_timeout: float = 10.0,
        max_reconnect_attempts: int = -1,
        credentials: NatsCredentials | None = None,
    ) -> Bus:
        """Connect, retrying for up to ``open_timeout`` seconds; afterwards reconnect forever.

        ``credentials`` = the NATS user to connect as (a refused one fails at once)."""
        if not url:
            raise BusError("no NATS server to connect to: start the stack with `taskbus up` (same data dir: "
                           "TASKBUS_DATA_DIR) or set TASKBUS_NATS_URL")
        connected = False
        refused: list[str] = []
        state = {"closing": False}

        async def on_error(exc: Exception) -> None:
            if _is_auth_error(exc):
                refused.append(str(exc))
            if connected:
                logger.warning("nats error (%s): %s", name, exc)
            else:
                logger.debug("nats connect attempt failed (%s): %s", name, exc)

        async def on_disconnect() -> None:
            if not state["closing"]:
                logger.warning("nats disconnected (%s); reconnecting", name)

        async def on_reconnect() -> None:
            logger.info("nats reconnected (%s)", name)

        try:
            async with asyncio.timeout(open_timeout):
                nc = await nats.connect(
                    url,
                    name=name,
                    connect_timeout=connect_timeout,
                    allow_reconnect=True,
                    max_reconnect_attempts=max_reconnect_attempts,
                    reconnect_time_wait=0.5,
                    error_cb=on_error,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                    **_auth_options(credentials),
                )
        except Exception as exc:  # nats raises several unrelated types here
            if refused or _is_auth_error(exc):
                who = f"user {credentials.user!r}" if credentials else "no credentials"
                raise BusError(
                    f"NATS at {safe_url(url)} refused the connection ({who}): authorization failed. "
                    "Use the credentials of this stack (TASKBUS_NATS_CREDENTIALS; `taskbus up` writes them "
                    "to <data dir>/nats-auth/)"
                ) from None
            reason = "no answer" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
            raise BusError(
                f"cannot connect to NATS at {safe_url(url)} within {open_timeout:g}s ({reason}). "
                "Is the stack running? (`taskbus up` starts it; `taskbus doctor` checks)"
            ) from None
        connected = True
        bus = cls(nc, subjects or Subjects())
        bus._state = state
        return bus

    @classmethod
    async def for_settings(cls, settings: Settings, *, name: str = "taskbus", **kwargs: Any) -> Bus:
        """``open`` with the URL, subject prefix and credentials of ``settings``."""
        return await cls.open(settings.nats_url, Subjects(settings.subject_prefix), name=name,
                              credentials=settings_credentials(settings), **kwargs)

    async def close(self, *, timeout: float = 5.0) -> None:
        if self._closed:
            return
        self._closed = True
        self._state["closing"] = True
        try:
            async with asyncio.timeout(timeout):
                await self.nc.drain()
        except Exception as exc:
            logger.warning("nats drain failed: %s; closing", exc)
            await self.nc.close()

    async def __aenter__(self) -> Bus:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.shield(self.close())

    # -- publishing

    async def publish(
        self,
        subject: str,
        message: Any,
        *,
        msg_id: str | None = None,
        headers: Mapping[str, str] | None = None,
        attempts: int = 5,
        timeout: float = 5.0,
    ) -> int:
        """Publish to JetStream and wait for the ack; retry with backoff. Returns the stream seq."""
        payload = message if isinstance(message, bytes) else encode(message)
        return await publish_acked(
            self.js, subject, payload, msg_id=msg_id, headers=headers, attempts=attempts, timeout=timeout
        )

    async def publish_unique(self, subject: str, message: Any, *, msg_id: str, stream: str, timeout: float = 5.0) -> int:
        """Publish with ``msg_id`` and make sure the stored message is ours: when the id was
        already used by a different message (another process won the race for it), raise
        ``DuplicateMessage``. A retry of our own earlier publish is not a conflict."""
        payload = message if isinstance(message, bytes) else encode(message)
        ack = await publish_acked(self.js, subject, payload, msg_id=msg_id, timeout=timeout, want_ack=True)
        if ack.duplicate:
            stored = await self.js.get_msg(stream, ack.seq)
            if stored.data != payload:
                raise DuplicateMessage(f"message id {msg_id} on {subject} is already taken by another message", subject=subject, msg_id=msg_id)
        return ack.seq

    async def ensure_streams(self, **kwargs: Any) -> None:
        await ensure_streams(self.js, self.subjects, **kwargs)


def settings_credentials(settings: Settings) -> NatsCredentials | None:
    """The credentials ``settings.nats_credentials`` points at, else None."""
    return read_credentials(settings.nats_credentials) if settings.nats_credentials else None


def connect_options(settings: Settings) -> dict[str, Any]:
    """``nats.connect`` keyword arguments for the user of ``settings`` (for raw clients)."""
    return _auth_options(settings_credentials(settings))


def _auth_options(credentials: NatsCredentials | None) -> dict[str, Any]:
    return {"user": credentials.user, "password": credentials.password} if credentials else {}


def _is_auth_error(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "authorization violation" in text or "authentication" in text or "user authentication" in text


async def publish_acked(
    js: JetStreamContext,
    subject: str,
    payload: bytes,
    *,
    msg_id: str | None = None,
    headers: Mapping[str, str] | None = None,
    attempts: int = 5,
    timeout: float = 5.0,
    base_delay: float = 0.1,
    want_ack: bool = False,
) -> Any:
    """Publish and return the stream sequence (or the whole PubAck with ``want_ack``)."""
    hdrs = {"Taskbus-Schema": SCHEMA_VERSION, **(headers or {})}
    if msg_id:
        hdrs["Nats-Msg-Id"] = msg_id

    def log_retry(exc: BaseException, attempt: int, delay: float) -> None:
        logger.debug("publish to %s failed (%s); retry %d in %.2fs", subject, exc, attempt, delay)

    async def once() -> Any:
        ack = await js.publish(subject, payload, timeout=timeout, headers=hdrs)
        return ack if want_ack else ack.seq

    try:
        return await retry_async(once, on=Exception, attempts=attempts,
                                 backoff=Backoff(base_delay, base_delay * 2 ** attempts), on_retry=log_retry)
    except Exception as last:
        raise PublishError(subject, attempts, str(last) or type(last).__name__) from last


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
    js: JetStreamContext, subjects: Subjects, *, max_bytes: int | None, max_age_s: float | None
) -> None:
    """The artifacts Object Store with its size and age limits (discard new: a full bucket
    refuses new objects rather than cutting chunks out of stored ones)."""
    try:
        try:
            await js.object_store(subjects.artifacts_bucket)
        except Exception:
            try:
                await js.create_object_store(
                    subjects.artifacts_bucket,
                    config=ObjectStoreConfig(
                        storage=StorageType.FILE, description="taskbus task artifacts", max_bytes=max_bytes, ttl=max_age_s
                    ),
                )
                return
            except BadRequestError as exc:  # raced with another process creating it: apply our limits below
                if "already in use" not in str(exc):
                    raise
        info = await js.stream_info(f"OBJ_{subjects.artifacts_bucket}")
        config, changed = info.config, False
        if max_bytes is not None and config.max_bytes != max_bytes:
            config.max_bytes, changed = max_bytes, True
        if max_age_s is not None and config.max_age != max_age_s:
            config.max_age, changed = max_age_s, True
        if changed:
            await js.update_stream(config)
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
) -> None:
    """Create or update the three streams, the artifacts Object Store, the cache KV and the
    job-claims KV.

    Idempotent: safe to call from every process at start-up. The artifacts limits
    (``None``: unlimited on create, unchanged on an existing bucket) are applied to an
    existing bucket too. ``update=False`` only creates what is missing (for a NATS user
    that may read stream info but not change streams).
    """
    for config in stream_configs(
        subjects, events_max_age_s=events_max_age_s, dedupe_window_s=dedupe_window_s
    ):
        try:
            await js.stream_info(config.name)
            if update:
                await js.update_stream(config)
        except NotFoundError:
            try:
                await js.add_stream(config)
            except BadRequestError as exc:  # raced with another process creating it
                if "already in use" not in str(exc):
                    raise
    await _ensure_artifacts(js, subjects, max_bytes=artifacts_max_bytes, max_age_s=artifacts_max_age_s)
    for bucket, ttl, description in (
        (subjects.cache_bucket, DAY, "taskbus completion cache"),
        (subjects.claims_bucket, max(events_max_age_s, DAY),
         "taskbus job claims: task id -> job message a runner took (replay check)"),
    ):
        await ensure_key_value(js, bucket, ttl=ttl, description=description)


async def ensure_key_value(
    js: JetStreamContext, bucket: str, *, ttl: float | None, description: str, direct: bool = False
) -> Any:
    """The KV bucket ``bucket`` (history 1), created when missing; returns it. ``direct``:
    reads are direct gets served by the stream, not JetStream API requests (which queue
    behind consumer creations under load)."""
    try:
        return await js.key_value(bucket)
    except Exception:
        try:
            return await js.create_key_value(KeyValueConfig(
                bucket=bucket, storage=StorageType.FILE, ttl=ttl, history=1, description=description,
                direct=direct or None,
            ))
        except BadRequestError as exc:  # raced with another process creating it
            if "already in use" not in str(exc):
                raise
            return await js.key_value(bucket)


async def ensure_control_plane(js: JetStreamContext, subjects: Subjects) -> dict[str, Any]:
    """The control plane's KV buckets (keys/profiles/budgets, the ledger, the task registry),
    created when missing. Not part of ``ensure_streams``: the runner and audit users are
    denied these buckets; ``profiles.Store`` (server, CLI) calls this."""
    return {
        bucket: await ensure_key_value(js, bucket, ttl=None, description=description, direct=True)
        for bucket, description in (
            (subjects.control_bucket, "taskbus control plane: API key hashes, profiles, budget overrides"),
            (subjects.ledger_bucket, "taskbus ledger: budget entries per account, rate windows, reservations"),
            (subjects.tasks_bucket, "taskbus task registry"),
        )
    }
