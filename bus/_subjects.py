"""Subjects, stream names and ids. Every subject taskbus uses is built here.

Tokens are validated so that nothing a caller sends can add a subject level or a
wildcard: ``events("a.>")`` raises SubjectError instead of subscribing to everything.
"""

from __future__ import annotations

import os
import re
import time
from typing import Literal

from ._errors import SubjectError

JobKind = Literal["complete", "task"]
JOB_KINDS: tuple[JobKind, ...] = ("complete", "task")

_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,128}$")
_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"


def check_token(token: str, what: str = "subject token") -> str:
    if not isinstance(token, str) or not _TOKEN.match(token):
        raise SubjectError(str(token), what)
    return token


def new_task_id() -> str:
    """``t_`` + 26 characters: 48-bit millisecond time then 80 random bits (sortable)."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "t_" + "".join(reversed(chars))


class Subjects:
    """Subject and stream names for one prefix (default ``taskbus``)."""

    def __init__(self, prefix: str = "taskbus") -> None:
        self.prefix = check_token(prefix, "subject prefix")
        upper = self.prefix.upper().replace("-", "_")
        self.jobs_stream = f"{upper}_JOBS"
        self.events_stream = f"{upper}_EVENTS"
        self.audit_stream = f"{upper}_AUDIT"
        self.artifacts_bucket = f"{self.prefix}-artifacts"
        self.catalog_bucket = f"{self.prefix}-catalog"
        self.cache_bucket = f"{self.prefix}-cache"
        self.claims_bucket = f"{self.prefix}-claims"
        """KV: task id -> the stream sequence of the job message a runner claimed (replay check)."""
        self.control_bucket = f"{self.prefix}-control"
        """KV: API keys (hashes only), profiles and per-account budget overrides; every server watches it."""
        self.ledger_bucket = f"{self.prefix}-ledger"
        """KV: one budget entry per account (compare-and-set), rate windows per key, reservations."""
        self.tasks_bucket = f"{self.prefix}-tasks"
        """KV: the task registry (one record per task) with a per-key and a live-task index."""

    # -- submit (core request/reply)
    def submit(self, kind: JobKind) -> str:
        return f"{self.prefix}.submit.{_kind(kind)}"

    # -- jobs (JetStream work queue)
    def jobs(self, kind: JobKind) -> str:
        return f"{self.prefix}.jobs.{_kind(kind)}"

    def jobs_all(self) -> str:
        return f"{self.prefix}.jobs.*"

    def job_consumer(self, kind: JobKind) -> str:
        return f"runners-{_kind(kind)}"

    # -- events (JetStream, limits retention)
    def events(self, task_id: str) -> str:
        return f"{self.prefix}.events.{check_token(task_id, 'task id')}"

    def events_all(self) -> str:
        return f"{self.prefix}.events.*"

    # -- audit notices from the server and the CLI
    def audit(self, kind: str) -> str:
        return f"{self.prefix}.audit.{check_token(kind, 'audit kind')}"

    def audit_all(self) -> str:
        return f"{self.prefix}.audit.*"

    def audit_head(self) -> str:
        return f"{self.prefix}.auditlog.head"

    def alerts(self, kind: str) -> str:
        return f"{self.prefix}.alerts.{check_token(kind, 'alert kind')}"

    # -- control and heartbeats (core NATS)
    def control(self, task_id: str) -> str:
        return f"{self.prefix}.control.{check_token(task_id, 'task id')}"

    def runner(self, runner_id: str) -> str:
        return f"{self.prefix}.runners.{check_token(runner_id, 'runner id')}"

    def runners_all(self) -> str:
        return f"{self.prefix}.runners.*"


def _kind(kind: str) -> str:
    if kind not in JOB_KINDS:
        raise SubjectError(str(kind), "job kind (complete or task)")
    return kind
