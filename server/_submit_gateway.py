"""The NATS submit gateway: request/reply on ``<prefix>.submit.complete|task``.

A publisher sends the request JSON (``CompleteRequest`` / ``TaskRequest``; the ``kind``
field is optional, the subject says it) with ``Authorization: Bearer <key>`` and gets
``SubmitAccepted {task_id, events_subject}`` or ``SubmitRejected {code, message}``.
It then follows the events subject itself. A ``Nats-Msg-Id`` header makes a retried
submit idempotent: the same key and id get the same task back, claimed atomically in a
JetStream KV bucket shared by every server (``_idempotency``), so concurrent duplicates,
a restarted server and a second server all return the first request's reply.
A subject under ``<prefix>.submit.`` naming no known kind gets a ``rejected`` reply.

Several servers share the load through a queue group. Every request is handled in its
own task (bounded), and nothing a publisher sends can stop the gateway: oversized,
malformed, unauthenticated and refused requests all get a ``rejected`` reply.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from bus import (
    JOB_KINDS,
    CompleteRequest,
    InvalidInput,
    MessageTooLarge,
    SubmitAccepted,
    SubmitRejected,
    TaskbusError,
    TaskRequest,
    decode,
    encode,
    redact,
)

from ._dispatch import Dispatcher

logger = logging.getLogger(__name__)

QUEUE_GROUP = "taskbus-submit"
MAX_INFLIGHT = 256
REQUEST_TYPES: dict[str, type] = {"complete": CompleteRequest, "task": TaskRequest}


def bearer(headers: dict[str, str] | None) -> str | None:
    """The key from ``Authorization: Bearer <key>`` (case-insensitive header name)."""
    for name, value in (headers or {}).items():
        if name.lower() == "authorization":
            scheme, _, token = value.strip().partition(" ")
            return token.strip() if scheme.lower() == "bearer" and token.strip() else None
    return None


class SubmitGateway:
    """``async with SubmitGateway(dispatcher):`` serves until the block exits."""

    def __init__(self, dispatcher: Dispatcher, *, queue: str = QUEUE_GROUP, max_inflight: int = MAX_INFLIGHT) -> None:
        self.dispatcher = dispatcher
        self.queue = queue
        self._slots = asyncio.Semaphore(max_inflight)
        self._subs: list[Subscription] = []
        self._tg: asyncio.TaskGroup | None = None
        self.handled = 0

    async def __aenter__(self) -> SubmitGateway:
        self._tg = asyncio.TaskGroup()
        await self._tg.__aenter__()
        bus = self.dispatcher.bus
        # the whole submit space: an unknown kind gets a `rejected` reply, not "no responders"
        sub = await bus.nc.subscribe(f"{bus.subjects.prefix}.submit.>", queue=self.queue, cb=self._on_msg)
        self._subs.append(sub)
        await bus.nc.flush(timeout=5)
        logger.info("submit gateway on %s.submit.* (queue %s)", bus.subjects.prefix, self.queue)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for sub in self._subs:
            try:
                await sub.unsubscribe()
            except Exception as err:
                logger.debug("unsubscribe failed: %s", err)
        self._subs.clear()
        tg, self._tg = self._tg, None
        if tg is not None:
            await tg.__aexit__(None, None, None)

    async def _on_msg(self, msg: Msg) -> None:
        if self._tg is None:
            return
        await self._slots.acquire()
        self._tg.create_task(self._serve(msg))

    async def _serve(self, msg: Msg) -> None:
        try:
            reply = await self.handle(msg.subject, msg.data, msg.headers)
            if msg.reply:
                await msg.respond(encode(reply))
        except asyncio.CancelledError:
            raise
        except Exception:  # never let one request stop the gateway
            logger.exception("submit on %s failed unexpectedly", msg.subject)
            if msg.reply:
                try:
                    await msg.respond(encode(SubmitRejected(code="internal_error", message="the server failed; retry later")))
                except Exception as err:
                    logger.debug("could not send the error reply: %s", err)
        finally:
            self.handled += 1
            self._slots.release()

    async def handle(self, subject: str, data: bytes, headers: dict[str, str] | None) -> SubmitAccepted | SubmitRejected:
        """One submit request to its reply. Every refusal is audited with its own kind."""
        kind = subject[len(self.dispatcher.bus.subjects.prefix) + len(".submit.") :]
        settings = self.dispatcher.settings
        try:
            caller = await self.dispatcher.authenticate(bearer(headers), via="nats")
        except TaskbusError as exc:
            logger.info("submit on %s rejected: %s", subject[:200], exc.code)
            return SubmitRejected(code=exc.code, message=redact(exc.describe()))
        try:
            if kind not in REQUEST_TYPES:
                raise InvalidInput(
                    f"unknown submit kind {kind[:100]!r}; publish to "
                    + " or ".join(self.dispatcher.bus.subjects.submit(k) for k in JOB_KINDS)
                )
            if len(data) > settings.max_message_bytes:
                raise MessageTooLarge(len(data), settings.max_message_bytes, type_name=f"{kind} request")
            request: Any = decode(data, REQUEST_TYPES[kind], max_bytes=settings.max_message_bytes)
        except TaskbusError as exc:
            await self.dispatcher.audit(exc, actor=caller.key_id, detail={"via": "nats", "subject": subject[:200]})
            logger.info("submit on %s rejected: %s", subject[:200], exc.code)
            return SubmitRejected(code=exc.code, message=redact(exc.describe()))
        try:
            submission = await self.dispatcher.submit(caller, request, via="nats", idempotency_key=_header(headers, "Nats-Msg-Id"))
        except TaskbusError as exc:  # audited by the dispatcher
            logger.info("submit on %s rejected: %s", subject[:200], exc.code)
            return SubmitRejected(code=exc.code, message=redact(exc.describe()))
        return SubmitAccepted(task_id=submission.task_id, events_subject=submission.events_subject)


def _header(headers: dict[str, str] | None, name: str) -> str | None:
    for key, value in (headers or {}).items():
        if key.lower() == name.lower():
            return value
    return None
