"""Prometheus metrics of one runner, served on its own port (``runner_metrics_port``).

What moves them: every event the runner publishes (``TaskEvents.on_event``: gateway
calls and tokens from ``model_call``, ``security`` by kind, ``finished`` by status), and
the sandbox backend, wrapped so each create and destroy is timed per backend. The warm
pool level is read when scraped. One ``CollectorRegistry`` per runner, never the global
one. Every metric is described in docs/metrics.md.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from bus import Event, Finished, ModelCall, Security

logger = logging.getLogger(__name__)

SANDBOX_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)


class RunnerMetrics:
    """The runner's metric families and, when served, its HTTP endpoint."""

    def __init__(self, runner_id: str, backend: str) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.backend = backend
        info = Gauge("taskbus_runner_info", "Always 1; labels name the runner and its backend.", ["runner", "backend"], registry=r)
        info.labels(runner_id, backend).set(1)
        self.sandbox_create = Histogram(
            "taskbus_sandbox_create_duration_seconds",
            "Time to create a started, ready sandbox.",
            ["backend"],
            buckets=SANDBOX_BUCKETS,
            registry=r,
        )
        self.sandbox_destroy = Histogram(
            "taskbus_sandbox_destroy_duration_seconds",
            "Time to destroy a sandbox.",
            ["backend"],
            buckets=SANDBOX_BUCKETS,
            registry=r,
        )
        self.sandbox_errors = Counter("taskbus_sandbox_create_errors", "Sandbox creations that failed.", ["backend"], registry=r)
        self.warm_pool = Gauge(
            "taskbus_warm_pool_sandboxes",
            "Idle warm sandboxes ready to hand out (docker warm pool).",
            ["backend"],
            registry=r,
        )
        self.gateway_calls = Counter(
            "taskbus_gateway_calls",
            "Model calls metered by the gateway, by model and HTTP status.",
            ["model", "status"],
            registry=r,
        )
        self.gateway_tokens = Counter(
            "taskbus_gateway_tokens",
            "Tokens metered by the gateway, by model and type.",
            ["model", "type"],
            registry=r,
        )
        self.gateway_cost = Counter(
            "taskbus_gateway_cost_usd",
            "Cost metered by the gateway, by model (US dollars).",
            ["model"],
            registry=r,
        )
        self.finished = Counter("taskbus_runner_tasks_finished", "Jobs this runner finished, by final status.", ["status"], registry=r)
        self.security_events = Counter(
            "taskbus_runner_security_events",
            "`security` events this runner published, by kind.",
            ["kind"],
            registry=r,
        )
        self.events = Counter("taskbus_runner_events", "Events this runner published, by type.", ["type"], registry=r)
        self.warm_pool.labels(backend).set(0)
        self._server: Any = None

    def observe_event(self, event: Event) -> None:
        self.events.labels(type(event).__name__.lower()).inc()
        if isinstance(event, ModelCall):
            self.gateway_calls.labels(event.model, str(event.status)).inc()
            usage = event.usage
            for kind, count in (
                ("input", usage.input_tokens),
                ("output", usage.output_tokens),
                ("cache_write", usage.cache_creation_input_tokens),
                ("cache_read", usage.cache_read_input_tokens),
            ):
                if count:
                    self.gateway_tokens.labels(event.model, kind).inc(count)
            if event.cost_usd > 0:
                self.gateway_cost.labels(event.model).inc(event.cost_usd)
        elif isinstance(event, Security):
            self.security_events.labels(event.kind).inc()
        elif isinstance(event, Finished):
            self.finished.labels(event.status).inc()

    def watch_pool(self, backend: Any) -> None:
        """Report the docker warm pool's idle sandboxes when scraped."""

        def level() -> float:
            return float(warm_sandboxes(backend))

        self.warm_pool.labels(self.backend).set_function(level)

    def serve(self, host: str, port: int) -> int:
        """Serve ``/metrics`` on ``host:port`` (a daemon thread); returns the bound port."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        self._server = server
        bound = int(server.server_address[1])
        logger.info("runner metrics on http://%s:%d/metrics", host, bound)
        return bound

    def close(self) -> None:
        if self._server is not None:
            server, self._server = self._server, None
            server.shutdown()
            server.server_close()


class TimedBackend:
    """A sandbox backend whose ``create`` and the created sandboxes' ``destroy`` are timed."""

    def __init__(self, inner: Any, metrics: RunnerMetrics) -> None:
        self._inner = inner
        self._metrics = metrics
        self.name = inner.name

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def create(self, spec: Any) -> Any:
        started = time.perf_counter()
        try:
            sandbox = await self._inner.create(spec)
        except BaseException:
            self._metrics.sandbox_errors.labels(self.name).inc()
            raise
        self._metrics.sandbox_create.labels(self.name).observe(time.perf_counter() - started)
        destroy = sandbox.destroy
        histogram = self._metrics.sandbox_destroy.labels(self.name)
        done = False

        async def timed_destroy(*args: Any, **kwargs: Any) -> None:
            nonlocal done
            begun = time.perf_counter()
            try:
                await destroy(*args, **kwargs)
            finally:
                if not done:  # destroy is idempotent; time the first one only
                    done = True
                    histogram.observe(time.perf_counter() - begun)

        sandbox.destroy = timed_destroy
        return sandbox


def warm_sandboxes(backend: Any) -> int:
    """Idle warm sandboxes of ``backend`` (the Docker warm pool; 0 when it has none)."""
    pool = getattr(backend, "_pool", None)
    return pool.idle_count() if pool is not None else 0
