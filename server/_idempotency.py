"""Exactly-once submit: an idempotency id is claimed in a JetStream KV bucket before anything
is recorded.

The first request with a (key, id) pair creates the entry ``pending`` (an atomic
create-if-absent on the server, so two requests at once, two server processes or a
restarted one all see the same claim), admits the request and replaces the entry with
its reply. A duplicate waits for that reply and returns it. A refused first request
deletes its claim (nothing was created; the retry is admitted on its own). The claim
records a hash of the request: the same id with a different request is refused
(``invalid_input``) rather than answered with another request's task. A claim
left ``pending`` by a server that died is taken over after ``STALE_S`` with the same
task id, so the job it may already have published is deduplicated by JetStream and
the ledger. Entries live ``submit_idempotency_ttl_s`` (the bucket's max age).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import KeyValueConfig, StorageType
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError

from bus import Bus, BusError, BusTimeout, InvalidInput, new_task_id
from profiles import SafeKeys

logger = logging.getLogger(__name__)

STALE_S = 120.0
WAIT_S = 25.0
MAX_ID_CHARS = 256

Admit = Callable[[str, bool], Awaitable[dict[str, Any]]]
"""``admit(task_id, takeover)``: ``takeover`` when the task id comes from a stale claim (its first admission may have got anywhere)."""


def claim_key(key_id: str, idempotency_id: str) -> str:
    return "s_" + hashlib.sha256(f"{key_id}\0{idempotency_id}".encode()).hexdigest()


class SubmitClaims:
    def __init__(self, bus: Bus, ttl_s: int, *, wait_s: float = WAIT_S, stale_s: float = STALE_S) -> None:
        self.bus = bus
        self.ttl_s = ttl_s
        self.wait_s = wait_s
        self.stale_s = stale_s
        self._kv: Any = None

    @property
    def bucket(self) -> str:
        return f"{self.bus.subjects.prefix}-submits"

    async def open(self) -> None:
        """Create (or bind) the claims bucket now: on a cluster its stream needs a moment to
        elect a leader, which a server's start can absorb and a caller's first request cannot."""
        await self._bucket()

    async def _bucket(self) -> Any:
        if self._kv is None:
            kv = await self.bus.ensure_kv(
                KeyValueConfig(
                    bucket=self.bucket,
                    storage=StorageType.FILE,
                    ttl=float(self.ttl_s),
                    history=1,
                    description="taskbus submit idempotency claims",
                )
            )
            self._kv = SafeKeys(kv, patience_s=self.bus.publish_patience_s)  # a leader election is waited out
        return self._kv

    async def once(self, key_id: str, idempotency_id: str, fingerprint: str, admit: Admit) -> dict[str, Any]:
        """``admit(task_id)``'s reply for the first request with this (key, id); the same reply
        for every later one (waiting while the first is still being admitted). A later request
        whose ``fingerprint`` (a hash of its body) differs is InvalidInput: the id is taken."""
        try:
            return await self._once(key_id, idempotency_id, fingerprint, admit)
        except (nats.errors.Error, nats.js.errors.Error) as exc:  # the bus refused or did not answer
            raise BusError(
                f"the message bus did not answer ({type(exc).__name__}); retry in a moment with the same idempotency id"
            ) from exc

    async def _once(self, key_id: str, idempotency_id: str, fingerprint: str, admit: Admit) -> dict[str, Any]:
        kv = await self._bucket()
        key = claim_key(key_id, idempotency_id[:MAX_ID_CHARS])
        deadline = time.monotonic() + self.wait_s
        delay = 0.01
        while True:
            task_id = new_task_id()
            pending = _doc(state="pending", task_id=task_id, at=time.time(), fingerprint=fingerprint)
            try:
                await kv.create(key, pending)
                return await self._admit(kv, key, task_id, fingerprint, admit, takeover=False)
            except KeyWrongLastSequenceError:
                pass
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                continue  # the first request was refused and let go of the claim: try again
            doc = json.loads(entry.value or b"{}")
            if doc.get("fingerprint") != fingerprint:
                raise InvalidInput(
                    f"idempotency id {idempotency_id[:100]!r} was already used for a different request by this key; "
                    "use a new id for a new request"
                )
            if doc.get("state") == "done":
                return dict(doc["reply"])
            if time.time() - float(doc.get("at", 0)) > self.stale_s:
                try:  # its server died while admitting: take over with the same task id
                    await kv.update(
                        key, _doc(state="pending", task_id=doc["task_id"], at=time.time(), fingerprint=fingerprint), last=entry.revision
                    )
                except KeyWrongLastSequenceError:
                    continue
                logger.warning("took over a stale submit claim for task %s", doc["task_id"])
                return await self._admit(kv, key, doc["task_id"], fingerprint, admit, takeover=True)
            if time.monotonic() > deadline:
                raise BusTimeout("a request with this idempotency id is still being admitted; retry with the same id")
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.25)

    async def _admit(self, kv: Any, key: str, task_id: str, fingerprint: str, admit: Admit, *, takeover: bool) -> dict[str, Any]:
        try:
            reply = await admit(task_id, takeover)
        except BaseException:
            await asyncio.shield(self._release(kv, key))
            raise
        await kv.put(key, _doc(state="done", task_id=task_id, reply=reply, at=time.time(), fingerprint=fingerprint))
        return reply

    async def _release(self, kv: Any, key: str) -> None:
        try:
            await kv.delete(key)
        except Exception as exc:
            logger.error("could not release a refused submit claim: %s", exc)


def _doc(**fields: Any) -> bytes:
    return json.dumps(fields, separators=(",", ":")).encode()
