"""Publishing audit notices of key, profile and budget changes on ``<prefix>.audit.<kind>``.

The store is the source of truth: a change is committed first, then announced. When
NATS is not configured nothing is published; when it is configured but unreachable the
caller gets one warning and the change still stands (the audit log then lacks it, which
the warning says).
"""

from __future__ import annotations

import asyncio
import logging

from bus import AuditNotice, Bus, Settings, Subjects, TaskbusError

logger = logging.getLogger(__name__)


class NoticeBuffer:
    """A ``Store(notify=...)`` target that keeps notices until they are published."""

    def __init__(self) -> None:
        self.notices: list[AuditNotice] = []

    def __call__(self, notice: AuditNotice) -> None:
        self.notices.append(notice)


class _Quiet(logging.Filter):
    """Drops the bus connection's per-attempt warnings; the caller gets one summary instead."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR


async def publish_notices(settings: Settings, notices: list[AuditNotice], *, timeout: float = 3.0) -> str | None:
    """Publish ``notices`` (acked) within ``timeout`` seconds.

    Returns None on success or when there is nothing to do, else one warning line
    (without raising: the change is already committed).
    """
    if not notices or not settings.nats_url:
        return None
    subjects = Subjects(settings.subject_prefix)
    connection_logger = logging.getLogger("bus._connection")
    quiet = _Quiet()
    connection_logger.addFilter(quiet)
    try:
        async with asyncio.timeout(timeout):
            bus = await Bus.for_settings(
                settings,
                name="taskbus-cli",
                connect_timeout=min(2.0, timeout),
                max_reconnect_attempts=0,
            )
            async with bus:
                await bus.ensure_streams(update=False)  # the operator may create, not change
                for notice in notices:
                    await bus.publish(subjects.audit(notice.kind), notice, attempts=2, timeout=timeout / 2)
    except (TaskbusError, OSError, TimeoutError) as exc:
        kinds = ", ".join(sorted({n.kind for n in notices}))
        reason = str(exc) or f"no answer within {timeout:g}s"
        return f"the change is saved, but its audit notice ({kinds}) could not be published to {settings.nats_url}: {reason}"
    finally:
        connection_logger.removeFilter(quiet)
    return None
