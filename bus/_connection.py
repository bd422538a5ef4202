"""Connecting to NATS and publishing with acks and retries (what to create: ``_provision``)."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Mapping
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.js import JetStreamContext
from nats.js.api import (
    KeyValueConfig,
    ObjectStoreConfig,
)
from nats.js.errors import NotFoundError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from ._codec import decode_event, encode
from ._errors import BusError, DuplicateMessage, MessageDecodeError, PublishError
from ._messages import SCHEMA_VERSION, Event
from ._natsauth import NatsCredentials, read_credentials
from ._provision import ensure_streams
from ._redact import safe_url
from ._retry import Backoff, retry_async
from ._settings import Settings
from ._streams import ensure_kv, ensure_object_store
from ._subjects import Subjects
from ._tls import TlsOnlyClient, tls_context, tls_failure, tls_options

logger = logging.getLogger(__name__)

CLUSTER_PUBLISH_PATIENCE_S = 30.0
"""With replicas > 1, a publish retries for this long: a replicated stream whose leader's node
died elects a new leader within seconds (longer on a loaded machine)."""


class Bus:
    """A NATS connection with its JetStream context and the deployment's subjects.

    ``async with Bus.connect(url, subjects) as bus:`` drains the connection on exit.
    """

    def __init__(self, nc: NatsClient, subjects: Subjects, *, replicas: int = 1) -> None:
        self.nc = nc
        self.js: JetStreamContext = nc.jetstream()
        self.subjects = subjects
        self.replicas = replicas
        """Replicas of every stream, KV bucket and Object Store this bus creates (TASKBUS_NATS_REPLICAS)."""
        self.publish_patience_s = CLUSTER_PUBLISH_PATIENCE_S if replicas > 1 else 0.0
        """How long a publish keeps retrying past its attempts (a replicated stream electing a leader)."""
        self._closed = False
        self._state: dict[str, bool] = {"closing": False}
        self._outage: list[float | None] = [None, None]  # monotonic start and end of the last disconnection

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
        replicas: int = 1,
        tls: ssl.SSLContext | None = None,
    ) -> Bus:
        """Connect, retrying for up to ``open_timeout`` seconds; afterwards reconnect forever.

        ``url`` may list several servers of one cluster, comma-separated; the client connects
        to one and fails over to the others (and to those the cluster announces).
        ``credentials`` = the NATS user to connect as (a refused one fails at once);
        ``replicas`` = the replica count of what this bus creates (``ensure_*``);
        ``tls`` = the SSL context to connect with (``bus._tls.tls_context``): then every
        server must require TLS, and when each listed one fails its TLS handshake the
        open fails at once, saying which setting to set."""
        if not url:
            raise BusError(
                "no NATS server to connect to: start the stack with `taskbus up` (same data dir: TASKBUS_DATA_DIR) or set TASKBUS_NATS_URL"
            )
        connected = False
        refused: list[str] = []
        tls_failed: list[str] = []
        state = {"closing": False}
        outage: list[float | None] = [None, None]

        async def on_error(exc: Exception) -> None:
            if _is_auth_error(exc):
                refused.append(str(exc))
            problem = tls_failure(exc) if tls is not None else None
            if problem and not connected:
                tls_failed.append(problem)
                if len(tls_failed) >= len(server_urls(url)):
                    raise _TlsRefused(problem)  # out of nats-py's retry loop: a certificate does not fix itself
            if connected:
                logger.warning("nats error (%s): %s", name, exc)
            else:
                logger.debug("nats connect attempt failed (%s): %s", name, exc)

        async def on_disconnect() -> None:
            outage[:] = [time.monotonic(), None]
            if not state["closing"]:
                logger.warning("nats disconnected (%s); reconnecting", name)

        async def on_reconnect() -> None:
            outage[1] = time.monotonic()
            logger.info("nats reconnected (%s)", name)

        options: dict[str, Any] = {  # nats-py types its timeouts as int; fractions work
            "servers": server_urls(url),
            "name": name,
            "connect_timeout": connect_timeout,
            "allow_reconnect": True,
            "max_reconnect_attempts": max_reconnect_attempts,
            "reconnect_time_wait": 0.5,
            "error_cb": on_error,
            "disconnected_cb": on_disconnect,
            "reconnected_cb": on_reconnect,
            "tls": tls,
            **_auth_options(credentials),
        }
        nc = TlsOnlyClient() if tls is not None else NatsClient()
        try:
            async with asyncio.timeout(open_timeout):
                await nc.connect(**options)
        except Exception as exc:  # nats raises several unrelated types here
            if tls_failed:
                _abandon(nc)
                raise BusError(f"cannot connect to NATS at {safe_url(url)} over TLS: {tls_failed[-1]}") from None
            if refused or _is_auth_error(exc):
                who = f"user {credentials.user!r}" if credentials else "no credentials"
                raise BusError(
                    f"NATS at {safe_url(url)} refused the connection ({who}): authorization failed. "
                    "Use the credentials of this stack (TASKBUS_NATS_CREDENTIALS; `taskbus up` writes them "
                    "to <data dir>/nats-auth/)"
                    + (", or a client certificate the server maps to a user (TASKBUS_NATS_TLS_CERT, verify_and_map)" if tls else "")
                ) from None
            reason = "no answer" if isinstance(exc, TimeoutError) else (str(exc) or type(exc).__name__)
            raise BusError(
                f"cannot connect to NATS at {safe_url(url)} within {open_timeout:g}s ({reason}). "
                "Is the stack running? (`taskbus up` starts it; `taskbus doctor` checks)"
            ) from None
        connected = True
        bus = cls(nc, subjects or Subjects(), replicas=replicas)
        bus._state = state
        bus._outage = outage
        return bus

    @property
    def reconnects(self) -> int:
        """How many times this connection has reconnected (a change means: what was
        subscribed may have missed messages, and a server-side consumer may be gone)."""
        return int(self.nc.stats.get("reconnects", 0))

    @property
    def reconnected_at(self) -> float | None:
        """``time.monotonic()`` when this connection last came back after an outage (None: never)."""
        return self._outage[1]

    def offline_between(self, start: float, end: float) -> float:
        """Seconds of ``[start, end]`` (``time.monotonic``) this connection spent disconnected
        in its last outage (up to ``end`` while it lasts): a heartbeat not heard then was
        not missed by its sender."""
        down, up = self._outage
        if down is None:
            return 0.0
        return max(0.0, min(end, up if up is not None else end) - max(start, down))

    @classmethod
    async def for_settings(cls, settings: Settings, *, name: str = "taskbus", **kwargs: Any) -> Bus:
        """``open`` with the URL, subject prefix, credentials and TLS settings of ``settings``."""
        return await cls.open(
            settings.nats_url,
            Subjects(settings.subject_prefix),
            name=name,
            credentials=settings_credentials(settings),
            replicas=settings.nats_replicas,
            tls=tls_context(settings),
            **kwargs,
        )

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
            self.js,
            subject,
            payload,
            msg_id=msg_id,
            headers=headers,
            attempts=attempts,
            timeout=timeout,
            patience_s=self.publish_patience_s,
        )

    async def publish_unique(self, subject: str, message: Any, *, msg_id: str, stream: str, timeout: float = 5.0) -> int:
        """Publish with ``msg_id`` and make sure the stored message is ours: when the id was
        already used by a different message (another process won the race for it), raise
        ``DuplicateMessage``. A retry of our own earlier publish is not a conflict."""
        payload = message if isinstance(message, bytes) else encode(message)
        ack = await publish_acked(
            self.js, subject, payload, msg_id=msg_id, timeout=timeout, want_ack=True, patience_s=self.publish_patience_s
        )
        if ack.duplicate:
            stored = await self.js.get_msg(stream, ack.seq)
            if stored.data != payload:
                raise DuplicateMessage(
                    f"message id {msg_id} on {subject} is already taken by another message", subject=subject, msg_id=msg_id
                )
        return ack.seq

    async def last_event(self, task_id: str) -> tuple[int, Event | None] | None:
        """The stream sequence and the decoded event of ``task_id``'s newest event (the event
        is None when that message does not decode), or None when the task has no event."""
        try:
            msg = await self.js.get_last_msg(self.subjects.events_stream, self.subjects.events(task_id))
        except NotFoundError:
            return None
        try:
            return msg.seq or 0, decode_event(msg.data or b"")
        except MessageDecodeError:
            return msg.seq or 0, None

    async def ensure_streams(self, **kwargs: Any) -> None:
        await ensure_streams(self.js, self.subjects, replicas=self.replicas, **kwargs)

    async def ensure_kv(self, config: KeyValueConfig, *, create: bool = True, update: bool = True) -> KeyValue:
        """The KV bucket of ``config`` with this bus's replicas (``bus._streams.ensure_kv``)."""
        return await ensure_kv(self.js, config, replicas=self.replicas, create=create, update=update)

    async def ensure_object_store(self, bucket: str, config: ObjectStoreConfig, *, create: bool = True, update: bool = True) -> ObjectStore:
        """The Object Store ``bucket`` with this bus's replicas (``bus._streams.ensure_object_store``)."""
        store, _ = await ensure_object_store(self.js, bucket, config, replicas=self.replicas, create=create, update=update)
        return store


def server_urls(url: str) -> list[str]:
    """The servers of a ``nats_url`` that lists several, comma-separated (one cluster)."""
    return [part.strip() for part in url.split(",") if part.strip()]


def settings_credentials(settings: Settings) -> NatsCredentials | None:
    """The credentials ``settings.nats_credentials`` points at, else None."""
    return read_credentials(settings.nats_credentials) if settings.nats_credentials else None


def connect_options(settings: Settings) -> dict[str, Any]:
    """``nats.connect`` keyword arguments for the user and TLS context of ``settings`` (for
    raw clients; they do not get ``Bus.open``'s refusal of a server that does not require TLS)."""
    return {**_auth_options(settings_credentials(settings)), **tls_options(settings)}


class _TlsRefused(Exception):
    """Raised from the error callback to stop nats-py retrying a TLS handshake that cannot succeed."""


def _abandon(nc: NatsClient) -> None:
    """Close the socket of a client whose connect was given up. (``nc.close()`` would wait
    its flush timeout on a connection that never finished its handshake and call the
    disconnect callback.)"""
    transport = nc._transport  # nats-py has no public way to drop a half-open connection
    if transport is not None:
        try:
            transport.close()
        except Exception as exc:
            logger.debug("closing an abandoned nats connection: %s", exc)


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
    patience_s: float = 0.0,
) -> Any:
    """Publish and return the stream sequence (or the whole PubAck with ``want_ack``).

    Tries ``attempts`` times, and beyond that until ``patience_s`` seconds have passed (a
    replicated stream whose leader's node died has no leader for some seconds: its publishes
    get "no response from stream" until the others elect one). With ``msg_id`` a retry of
    an earlier publish that did land is a duplicate, not a second message."""
    hdrs = {"Taskbus-Schema": SCHEMA_VERSION, **(headers or {})}
    if msg_id:
        hdrs["Nats-Msg-Id"] = msg_id
    tries = 1

    def log_retry(exc: BaseException, attempt: int, delay: float) -> None:
        nonlocal tries
        tries = attempt + 1
        logger.debug("publish to %s failed (%s); retry %d in %.2fs", subject, exc, attempt, delay)

    try:
        ack = await retry_async(
            lambda: js.publish(subject, payload, timeout=timeout, headers=hdrs),
            on=Exception,
            attempts=attempts,
            backoff=Backoff(base_delay, base_delay * 2**attempts),
            on_retry=log_retry,
            patience_s=patience_s,
        )
    except Exception as exc:
        raise PublishError(subject, tries, str(exc) or type(exc).__name__) from exc
    return ack if want_ack else ack.seq
