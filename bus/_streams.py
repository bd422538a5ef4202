"""The one place that creates JetStream streams, KV buckets and Object Stores.

Every stream, bucket and object store taskbus uses is created (or found) here, with the
deployment's replica count (``Settings.nats_replicas``, carried by ``Bus.replicas``). An
existing one with fewer replicas is raised to it (a KV bucket is the stream ``KV_<bucket>``,
an Object Store the stream ``OBJ_<bucket>``); one with more is left alone. A count larger
than the cluster can place is a ``BusError`` that says what to do.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import KeyValueConfig, ObjectStoreConfig, StreamConfig, StreamInfo
from nats.js.errors import APIError, BadRequestError, NoStreamResponseError, NotFoundError, ServiceUnavailableError
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from ._errors import BusError, BusTimeout
from ._retry import Backoff, retry_async
from ._subjects import Subjects

logger = logging.getLogger(__name__)
T = TypeVar("T")

PATIENT_ATTEMPTS = 6
"""Tries of one create/update when JetStream does not answer (about 40 s in all)."""
UNANSWERED = (TimeoutError, NoRespondersError, ServiceUnavailableError)
"""What a JetStream API request raises while JetStream cannot answer it yet (a meta leader
being elected, a node that just died, a loaded machine)."""
LEADERLESS = (NoStreamResponseError, NoRespondersError)
"""What a publish or direct get raises while its stream has no leader: the request reached
nobody, so nothing was written and a retry is safe (unlike a timeout: a write that timed out
may have landed)."""

JS_INSUFFICIENT_RESOURCES = 10023
"""JetStream's error code when it cannot place a stream's replicas (too few servers)."""
JS_REPLICAS_NOT_SUPPORTED = 10074
"""JetStream's error code for replicas > 1 on a server that is not part of a cluster."""
JS_NO_SUITABLE_PEERS = 10005
"""JetStream's error code when the cluster has fewer servers than the replicas asked for."""
_REPLICA_ERRORS = frozenset({JS_INSUFFICIENT_RESOURCES, JS_REPLICAS_NOT_SUPPORTED, JS_NO_SUITABLE_PEERS})


def kv_stream(bucket: str) -> str:
    return f"KV_{bucket}"


def object_stream(bucket: str) -> str:
    return f"OBJ_{bucket}"


@contextmanager
def replica_errors(what: str, replicas: int) -> Iterator[None]:
    """Turn JetStream's "cannot place the replicas" into one line that says what to do."""
    try:
        yield
    except APIError as exc:
        if exc.err_code not in _REPLICA_ERRORS:
            raise
        where = (
            "this NATS server is not part of a cluster"
            if exc.err_code == JS_REPLICAS_NOT_SUPPORTED
            else "the NATS cluster has fewer JetStream servers available"
        )
        raise BusError(
            f"cannot give {what} {replicas} replicas: {where}. Set TASKBUS_NATS_REPLICAS to at most the number "
            "of JetStream servers in the cluster (1 for a single server), or start more cluster nodes "
            "(docs/multi-host.md)"
        ) from None


async def raise_replicas(js: JetStreamContext, stream: str, replicas: int, *, info: StreamInfo | None = None) -> int:
    """Raise ``stream`` to ``replicas`` if it has fewer (never lowers it); log the change.
    Returns the stream's replica count afterwards."""
    info = info or await js.stream_info(stream)
    current = info.config.num_replicas or 1
    if current >= replicas:
        return current
    config = info.config
    config.num_replicas = replicas
    with replica_errors(f"the stream {stream}", replicas):
        await js.update_stream(config)
    logger.warning("raised the replicas of stream %s from %d to %d (TASKBUS_NATS_REPLICAS)", stream, current, replicas)
    return replicas


async def patient(call: Callable[[], Awaitable[T]], what: str) -> T:
    """``call`` again when JetStream did not answer in time: in a cluster a create waits for
    the meta leader and the new stream's own election, which a loaded machine (or a node
    that just went down) can delay past one request's timeout. Each ``call`` is idempotent."""

    def log_retry(exc: BaseException, attempt: int, delay: float) -> None:
        logger.info("JetStream did not answer for %s (%s); retry %d in %.1fs", what, type(exc).__name__, attempt, delay)

    return await retry_async(call, on=UNANSWERED, attempts=PATIENT_ATTEMPTS, backoff=Backoff(0.2, 5.0), on_retry=log_retry)


async def ensure_stream(js: JetStreamContext, config: StreamConfig, *, replicas: int = 1, update: bool = True) -> None:
    """Create ``config`` with ``replicas``, or bring an existing stream to it.

    ``update=True`` applies the whole config to an existing stream (keeping a larger replica
    count than ``replicas``); ``update=False`` only creates what is missing (for a NATS user
    that may read stream info but not change streams)."""
    assert config.name is not None
    await patient(lambda: _ensure_stream(js, config, replicas=replicas, update=update), f"the stream {config.name}")
    await wait_for_leader(js, config.name, replicas)


LEADER_WAIT_S = 20.0
"""How long ``ensure_*`` waits for a replicated stream it created or found to have a leader."""


async def wait_for_leader(js: JetStreamContext, stream: str, replicas: int, *, timeout: float = LEADER_WAIT_S) -> None:
    """Return once ``stream`` has an elected leader. A replicated stream that was just created
    (by this process or by another server a moment ago) answers nothing until its replicas
    have elected one: a publish to it meanwhile fails with "no responders". A single server
    (``replicas`` 1) has no election to wait for."""
    if replicas <= 1:
        return
    backoff = Backoff(0.02, 0.5)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        try:
            info = await js.stream_info(stream)
            if info.cluster is None or info.cluster.leader:
                return
        except (*UNANSWERED, NotFoundError):  # "not found" for a moment: the meta layer has not told every node yet
            pass
        if asyncio.get_running_loop().time() > deadline:
            raise BusTimeout(f"the stream {stream} has no leader after {timeout:g}s: check the NATS cluster (taskbus doctor)")
        await backoff.sleep()


async def _ensure_stream(js: JetStreamContext, config: StreamConfig, *, replicas: int, update: bool) -> None:
    assert config.name is not None
    wanted = dataclasses.replace(config, num_replicas=replicas)
    with replica_errors(f"the stream {config.name}", replicas):
        try:
            info = await js.stream_info(config.name)
        except NotFoundError:
            try:
                await js.add_stream(wanted)
                return
            except BadRequestError as exc:  # raced with another process creating it
                if "already in use" not in str(exc):
                    raise
            info = await js.stream_info(config.name)
        if not update:
            return
        current = info.config.num_replicas or 1
        wanted.num_replicas = max(current, replicas)  # an update without replicas would lower them
        await js.update_stream(wanted)
        if current < replicas:
            logger.warning("raised the replicas of stream %s from %d to %d (TASKBUS_NATS_REPLICAS)", config.name, current, replicas)


async def ensure_kv(
    js: JetStreamContext,
    config: KeyValueConfig,
    *,
    replicas: int = 1,
    create: bool = True,
    update: bool = True,
    apply_ttl: bool = False,
) -> KeyValue:
    """The KV bucket of ``config``: created with ``replicas``, or found and raised to them.
    ``create=False`` raises ``NotFoundError`` for a missing bucket; ``update=False`` leaves
    an existing one as it is; ``apply_ttl`` (with ``update``) also gives an existing one
    ``config.ttl`` as its max age (otherwise the ttl is only set at creation)."""
    kv = await patient(
        lambda: _ensure_kv(js, config, replicas=replicas, create=create, update=update, apply_ttl=apply_ttl),
        f"the KV bucket {config.bucket}",
    )
    await wait_for_leader(js, kv_stream(config.bucket), replicas)
    return kv


async def _ensure_kv(
    js: JetStreamContext, config: KeyValueConfig, *, replicas: int, create: bool, update: bool, apply_ttl: bool
) -> KeyValue:
    try:
        kv = await js.key_value(config.bucket)
    except NotFoundError:
        if not create:
            raise
        with replica_errors(f"the KV bucket {config.bucket}", replicas):
            try:
                return await js.create_key_value(dataclasses.replace(config, replicas=replicas))
            except BadRequestError as exc:  # raced with another process creating it
                if "already in use" not in str(exc):
                    raise
        kv = await js.key_value(config.bucket)
    if update:
        info = await apply_max_age(js, kv_stream(config.bucket), config.ttl or 0.0) if apply_ttl else None
        await raise_replicas(js, kv_stream(config.bucket), replicas, info=info)
    return kv


async def apply_max_age(js: JetStreamContext, stream: str, max_age_s: float) -> StreamInfo:
    """Give an existing ``stream`` (a KV bucket's) the max age ``max_age_s`` (0: none) when it
    has another one: a retention changed in the settings reaches buckets made before.
    Returns the stream's info afterwards."""
    info = await js.stream_info(stream)
    current = info.config.max_age or 0.0
    if abs(current - max_age_s) < 0.001:
        return info
    config = info.config
    config.max_age = max_age_s
    if max_age_s and (config.duplicate_window or 0) > max_age_s:  # JetStream refuses a window longer than the age
        config.duplicate_window = max_age_s
    info = await js.update_stream(config)
    logger.warning("changed the max age of stream %s from %gs to %gs", stream, current, max_age_s)
    return info


async def ensure_object_store(
    js: JetStreamContext, bucket: str, config: ObjectStoreConfig, *, replicas: int = 1, create: bool = True, update: bool = True
) -> tuple[ObjectStore, bool]:
    """The Object Store ``bucket``: created with ``config`` and ``replicas``, or found and
    raised to them. Returns (store, created)."""
    found = await patient(
        lambda: _ensure_object_store(js, bucket, config, replicas=replicas, create=create, update=update), f"the Object Store {bucket}"
    )
    await wait_for_leader(js, object_stream(bucket), replicas)
    return found


async def _ensure_object_store(
    js: JetStreamContext, bucket: str, config: ObjectStoreConfig, *, replicas: int, create: bool, update: bool
) -> tuple[ObjectStore, bool]:
    try:
        store = await js.object_store(bucket)
    except NotFoundError:
        if not create:
            raise
        with replica_errors(f"the Object Store {bucket}", replicas):
            try:
                return await js.create_object_store(bucket, config=dataclasses.replace(config, replicas=replicas)), True
            except BadRequestError as exc:  # raced with another process creating it
                if "already in use" not in str(exc):
                    raise
        store = await js.object_store(bucket)
    if update:
        await raise_replicas(js, object_stream(bucket), replicas)
    return store, False


UNSEEN_NS = 5_000_000_000
"""A stream's follower not heard from for this long (JetStream heartbeats every second) is
reported offline: the leader's own ``offline`` flag comes only once the meta layer notices."""


@dataclass(frozen=True)
class StreamHealth:
    """One stream's replicas and the state of its copies (``stream_health``)."""

    stream: str
    exists: bool
    replicas: int = 0
    leader: str = ""
    current: tuple[str, ...] = ()
    lagging: tuple[tuple[str, int], ...] = ()
    """(peer, operations behind)."""
    offline: tuple[str, ...] = ()
    error: str = ""
    """Why its info could not be read ("" when it was)."""


def taskbus_streams(subjects: Subjects) -> list[str]:
    """The streams under every stream, KV bucket and Object Store a deployment uses."""
    return [
        subjects.jobs_stream,
        subjects.events_stream,
        subjects.audit_stream,
        object_stream(subjects.artifacts_bucket),
        kv_stream(subjects.cache_bucket),
        kv_stream(subjects.claims_bucket),
        kv_stream(f"{subjects.prefix}-submits"),
        kv_stream(subjects.catalog_bucket),
        object_stream(subjects.catalog_bucket),
        kv_stream(subjects.control_bucket),
        kv_stream(subjects.ledger_bucket),
        kv_stream(subjects.tasks_bucket),
    ]


async def stream_health(js: JetStreamContext, stream: str, *, timeout: float = 3.0) -> StreamHealth:
    """Replicas, leader and followers of ``stream`` from its stream info (a read the
    operator's NATS user may make)."""
    try:
        async with asyncio.timeout(timeout):
            info = await js.stream_info(stream)
    except NotFoundError:
        return StreamHealth(stream, exists=False)
    except TimeoutError:
        return StreamHealth(stream, exists=True, error=f"no answer within {timeout:g}s (no leader elected?)")
    replicas = info.config.num_replicas or 1
    cluster = info.cluster
    if cluster is None:
        return StreamHealth(stream, exists=True, replicas=replicas, leader="(single server)")
    current, lagging, offline = [], [], []
    for peer in cluster.replicas or []:
        name = peer.name or "?"
        if peer.offline or (peer.active or 0) > UNSEEN_NS:
            offline.append(name)
        elif peer.current:
            current.append(name)
        else:
            lagging.append((name, peer.lag or 0))
    return StreamHealth(
        stream,
        exists=True,
        replicas=replicas,
        leader=cluster.leader or "",
        current=tuple(current),
        lagging=tuple(lagging),
        offline=tuple(offline),
    )
