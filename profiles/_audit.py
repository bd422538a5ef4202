"""Publishing audit notices of key, profile and budget changes on ``<prefix>.audit.<kind>``.

The store is the source of truth: a change is committed first, then announced. When
NATS is not configured nothing is published; when it is configured but unreachable the
caller gets one warning and the change still stands (the audit log then lacks it, which
the warning says).
"""

from __future__ import annotations

import logging

from bus import AuditNotice, Bus, Settings, Subjects, TaskbusError

logger = logging.getLogger(__name__)


class NoticeBuffer:
    """A ``Store(notify=...)`` target that keeps notices until they are published."""

    def __init__(self) -> None:
        self.notices: list[AuditNotice] = []

    def __call__(self, notice: AuditNotice) -> None:
        self.notices.append(notice)


async def publish_notices(
    settings: Settings, notices: list[AuditNotice], *, connect_timeout: float = 3.0
) -> str | None:
    """Publish ``notices`` (acked). Returns None on success or nothing to do, else a warning."""
    if not notices or not settings.nats_url:
        return None
    subjects = Subjects(settings.subject_prefix)
    try:
        async with await Bus.open(
            settings.nats_url, subjects, name="taskbus-cli", connect_timeout=connect_timeout,
            max_reconnect_attempts=0,
        ) as bus:
            await bus.ensure_streams()
            for notice in notices:
                await bus.publish(subjects.audit(notice.kind), notice, attempts=2, timeout=connect_timeout)
    except (TaskbusError, OSError, TimeoutError) as exc:
        kinds = ", ".join(sorted({n.kind for n in notices}))
        logger.debug("audit publish failed: %s", exc)
        return (
            f"the change is saved, but its audit notice ({kinds}) could not be published to "
            f"{settings.nats_url}: {exc}"
        )
    return None
