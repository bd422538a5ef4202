"""Prometheus metrics of the server process, served at ``/metrics`` on its HTTP port.

Counters move from what the dispatcher already sees: every admission (``submit``),
every audit notice it publishes (refusals, cancels), and every event of the tasks it
follows (``accepted`` .. ``finished``). Queue depth and consumer lag of the job and
audit streams are read from JetStream when ``/metrics`` is scraped, with a timeout.

Each server builds its own ``CollectorRegistry`` (never the global one), so two
servers in one process (tests) never collide. Every metric is described in
docs/metrics.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.requests import Request as HttpRequest
from starlette.responses import Response
from starlette.routing import Route

from bus import JOB_KINDS, Accepted, AuditNotice, Bus, Event, Finished, ModelCall, Request, Security

from ._dispatch import AUDIT_KINDS, Caller, Dispatcher, Submission, request_kind

logger = logging.getLogger(__name__)

SCRAPE_TIMEOUT_S = 2.0
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0)
DENIAL_KINDS = frozenset(AUDIT_KINDS.values())
# the durable consumers of the audit writer (audit/_subscriber.py)
AUDIT_CONSUMERS = (("events", "audit-events"), ("audit", "audit-notices"))


class ServerMetrics:
    """The server's metric families, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.admissions = Counter("taskbus_admissions", "Requests admitted or refused by the dispatcher.", ["kind", "outcome"], registry=r)
        self.admission_seconds = Histogram(
            "taskbus_admission_duration_seconds",
            "Time to admit (or refuse) one request.",
            ["kind"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.finished = Counter(
            "taskbus_tasks_finished",
            "Tasks and completions that ended, by kind and final status.",
            ["kind", "status"],
            registry=r,
        )
        self.e2e_seconds = Histogram(
            "taskbus_task_duration_seconds",
            "From `accepted` to `finished` (event timestamps), by kind.",
            ["kind"],
            buckets=E2E_BUCKETS,
            registry=r,
        )
        self.spend = Counter("taskbus_spend_usd", "Metered cost of finished tasks, by profile (US dollars).", ["profile"], registry=r)
        self.model_tokens = Counter(
            "taskbus_model_tokens",
            "Tokens of model calls of followed tasks, by model and type.",
            ["model", "type"],
            registry=r,
        )
        self.denials = Counter(
            "taskbus_denials",
            "Requests refused: auth_failure, denied, budget_refused, rate_limited.",
            ["kind"],
            registry=r,
        )
        self.audit_notices = Counter("taskbus_audit_notices", "Audit notices published by this server, by kind.", ["kind"], registry=r)
        self.security_events = Counter("taskbus_security_events", "`security` events of followed tasks, by kind.", ["kind"], registry=r)
        self.stream_messages = Gauge(
            "taskbus_stream_messages",
            "Messages stored in a JetStream stream (jobs: the queue depth).",
            ["stream"],
            registry=r,
        )
        self.consumer_pending = Gauge(
            "taskbus_consumer_pending_messages",
            "Messages not yet delivered to a durable consumer (its lag).",
            ["stream", "consumer"],
            registry=r,
        )
        self.consumer_ack_pending = Gauge(
            "taskbus_consumer_ack_pending_messages",
            "Messages delivered to a durable consumer and not yet acked.",
            ["stream", "consumer"],
            registry=r,
        )
        self.audit_lag = Gauge(
            "taskbus_audit_writer_lag_messages",
            "Messages the audit writer has not yet stored, by source stream.",
            ["source"],
            registry=r,
        )
        self.bus_scrape_ok = Gauge(
            "taskbus_bus_scrape_ok",
            "1 when the last scrape could read every stream and consumer, else 0.",
            registry=r,
        )
        for kind in JOB_KINDS:  # known label sets appear at 0 before the first task
            self.admissions.labels(kind, "accepted")
            self.finished.labels(kind, "succeeded")
        for denial in DENIAL_KINDS:
            self.denials.labels(denial)

    # ------------------------------------------------------------------ observations

    def observe_event(self, event: Event, accepted: Accepted | None) -> None:
        """One event of a followed task; ``accepted`` is the task's first event, if seen."""
        if isinstance(event, Finished):
            kind = accepted.kind if accepted else "unknown"
            self.finished.labels(kind, event.status).inc()
            if accepted is not None:
                self.e2e_seconds.labels(kind).observe(max(0.0, (event.ts - accepted.ts).total_seconds()))
            if event.cost_usd > 0:
                self.spend.labels(accepted.profile if accepted else "unknown").inc(event.cost_usd)
        elif isinstance(event, ModelCall):
            usage = event.usage
            for token_kind, count in (
                ("input", usage.input_tokens),
                ("output", usage.output_tokens),
                ("cache_write", usage.cache_creation_input_tokens),
                ("cache_read", usage.cache_read_input_tokens),
            ):
                if count:
                    self.model_tokens.labels(event.model, token_kind).inc(count)
        elif isinstance(event, Security):
            self.security_events.labels(event.kind).inc()

    def observe_notice(self, notice: AuditNotice) -> None:
        self.audit_notices.labels(notice.kind).inc()
        if notice.kind in DENIAL_KINDS:
            self.denials.labels(notice.kind).inc()

    async def refresh_streams(self, bus: Bus, *, timeout: float = SCRAPE_TIMEOUT_S) -> None:
        """Read queue depth and consumer lag from JetStream (best effort, bounded)."""
        subjects = bus.subjects
        ok = 1
        try:
            async with asyncio.timeout(timeout):
                for stream in (subjects.jobs_stream, subjects.audit_stream, subjects.events_stream):
                    info = await bus.js.stream_info(stream)
                    self.stream_messages.labels(stream).set(info.state.messages)
                consumers = [(subjects.jobs_stream, subjects.job_consumer(kind)) for kind in JOB_KINDS]
                streams = {"events": subjects.events_stream, "audit": subjects.audit_stream}
                consumers += [(streams[source], name) for source, name in AUDIT_CONSUMERS]
                for stream, name in consumers:
                    try:
                        cinfo = await bus.js.consumer_info(stream, name)
                    except Exception as exc:  # not created yet (no runner, no audit writer)
                        logger.debug("consumer %s/%s: %s", stream, name, exc)
                        continue
                    pending = cinfo.num_pending or 0
                    self.consumer_pending.labels(stream, name).set(pending)
                    self.consumer_ack_pending.labels(stream, name).set(cinfo.num_ack_pending or 0)
                    for source, audit_name in AUDIT_CONSUMERS:
                        if name == audit_name:
                            self.audit_lag.labels(source).set(pending)
        except Exception as exc:
            logger.warning("metrics: reading stream state failed: %s", exc)
            ok = 0
        self.bus_scrape_ok.set(ok)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class MeteredDispatcher(Dispatcher):
    """The dispatcher, counting what it admits, refuses, audits and follows."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.metrics = ServerMetrics()

    async def submit(self, caller: Caller, request: Request, *, via: str = "mcp", idempotency_key: str | None = None) -> Submission:
        kind = request_kind(request)
        started = time.perf_counter()
        outcome = "refused"
        try:
            submission = await super().submit(caller, request, via=via, idempotency_key=idempotency_key)
            outcome = "accepted"
            return submission
        finally:
            self.metrics.admission_seconds.labels(kind).observe(time.perf_counter() - started)
            self.metrics.admissions.labels(kind, outcome).inc()

    async def notice(self, notice: AuditNotice) -> None:
        self.metrics.observe_notice(notice)
        await super().notice(notice)

    async def _on_event(self, event: Event) -> None:
        await super()._on_event(event)
        watch = self.followers.watches.get(event.task_id)
        first = watch.events[0] if watch is not None and watch.events else None
        self.metrics.observe_event(event, first if isinstance(first, Accepted) else None)


def metrics_route(dispatcher: Dispatcher) -> Route:
    """``GET /metrics`` in the Prometheus text format (unauthenticated, like every exporter;
    it names profiles and models, never keys)."""

    async def endpoint(_request: HttpRequest) -> Response:
        metrics = getattr(dispatcher, "metrics", None)
        if metrics is None:
            return Response("metrics are off\n", status_code=404, media_type="text/plain")
        await metrics.refresh_streams(dispatcher.bus)
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return Route("/metrics", endpoint, methods=["GET"])
