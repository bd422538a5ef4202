"""The dispatch service: the one path every request takes, from MCP or from NATS.

    authenticate key -> claim the idempotency id (if any) -> validate -> rate limit
    -> completion cache (a hit: registered, ``accepted`` + ``finished``, audited ``cache_hit``)
    -> can the budget pay for the cheapest possible call? -> route model -> resolve policy
    -> reserve budget and record task (concurrency) -> publish ``accepted`` (seq 1) then
    the signed job -> follow the task's events -> settle the budget on ``finished``

Refusals (bad key, invalid input, denied permission, budget, rate limit, concurrency)
are published as ``AuditNotice`` on ``<prefix>.audit.<kind>``, each with its own kind
(``AUDIT_KINDS``), and raised as the ``bus`` error (stable ``code``, ``describe()``
says what to do). A caller only ever sees its own key's
tasks: another key's task id is ``NotFound``, exactly like an unknown one.

Settlement is driven by the events stream, not by whoever waits: a follower per
unfinished task runs in the dispatcher's TaskGroup, and on start-up the dispatcher
resumes following every task the registry still lists as unfinished, so a restart in
the middle of a task still settles its budget and records its result.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from typing import Any, NamedTuple

from nats.errors import Error as NatsError

from bus import (
    Accepted,
    AuditNotice,
    AuthError,
    BudgetExceeded,
    Bus,
    BusError,
    BusTimeout,
    Cancel,
    Catalog,
    CatalogEntry,
    CatalogKind,
    CompleteRequest,
    ConcurrencyLimit,
    Event,
    Finished,
    InvalidInput,
    Job,
    JobKind,
    MessageDecodeError,
    MessageTooLarge,
    NotFound,
    PolicyDenied,
    RateLimited,
    Request,
    Settings,
    Started,
    TaskbusError,
    canonical,
    encode,
    new_task_id,
    sign_job,
    utcnow,
)
from profiles import Profile, Store, TaskRecord, check_can_pay, offered_catalog, resolve_policy

from ._admission_undo import AdmissionUndo, finish_unstarted
from ._auth_audit import AuthAuditThrottle
from ._dispatch_cache import CachedCompletion, CompletionCache, cache_key, cacheable
from ._dispatch_events import TaskWatch
from ._followers import FINAL, Followers
from ._idempotency import SubmitClaims
from ._project_path import project_realpath
from ._request_checks import check_job_size, validate_request
from ._router import cheapest_call_usd, route_model

logger = logging.getLogger(__name__)

AUDIT_KINDS: dict[type[TaskbusError], str] = {
    AuthError: "auth_failure",
    PolicyDenied: "denied",
    BudgetExceeded: "budget_refused",
    ConcurrencyLimit: "concurrency_limit",
    RateLimited: "rate_limited",
    InvalidInput: "invalid_input",
    MessageTooLarge: "message_too_large",
    MessageDecodeError: "malformed_message",
    NotFound: "not_found",
}
REFUSALS = (PolicyDenied, BudgetExceeded, RateLimited, ConcurrencyLimit, InvalidInput, MessageDecodeError)


BUILTIN_AGENT_DESCRIPTIONS = {
    "general-purpose": "Claude Code's built-in general-purpose agent for multi-step research and tasks.",
    "Explore": "Claude Code's built-in read-only agent for searching and exploring code.",
    "Plan": "Claude Code's built-in agent for designing an implementation plan.",
}


class Caller(NamedTuple):
    """Who is calling: the key's display prefix (``key_id``) and its profile."""

    key_id: str
    profile: str


class _Routed(NamedTuple):
    model: str
    reason: str
    remaining_usd: float | None


class Submission(NamedTuple):
    task_id: str
    events_subject: str
    model: str
    routing_reason: str
    reserved_usd: float
    cached: bool = False


def request_kind(request: Request) -> JobKind:
    return "complete" if isinstance(request, CompleteRequest) else "task"


def _audit_kind(exc: TaskbusError) -> str | None:
    for cls in type(exc).__mro__:
        if cls in AUDIT_KINDS:
            return AUDIT_KINDS[cls]
    return None


class Dispatcher:
    """Shared by the MCP tools and the NATS submit gateway. ``async with`` it."""

    def __init__(self, settings: Settings, bus: Bus, store: Store, *, secret: str) -> None:
        self.settings = settings
        self.bus = bus
        self.store = store
        self._secret = secret
        self._auth_audit = AuthAuditThrottle(self.notice, window_s=settings.auth_audit_window_s)
        self._cache = CompletionCache(bus)
        self.followers = Followers(settings, bus, store, self._cache, on_event=self._on_event)
        self._undo = AdmissionUndo(bus, store, self.followers)
        self._claims = SubmitClaims(bus, settings.submit_idempotency_ttl_s)
        self._catalog: Catalog | None = None

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Dispatcher:
        await self._auth_audit.__aenter__()
        await self._claims.open()
        await self.followers.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._undo.aclose()
        await self.followers.__aexit__(None, None, None)
        await self._auth_audit.aclose()

    # ------------------------------------------------------------------ auth and audit

    async def authenticate(self, api_key: str | None, *, via: str) -> Caller:
        """The caller behind ``api_key``; AuthError (audited) when missing, unknown, revoked, expired."""
        try:
            if not api_key:
                raise AuthError("no API key given")
            record = await self.store.authenticate(api_key)
        except AuthError as exc:
            await self._auth_audit.failed(exc, via=via)  # throttled: a flood of bad keys costs few rows
            raise
        return Caller(record.prefix, record.profile)

    async def audit(self, exc: TaskbusError, *, actor: str, task_id: str | None = None, detail: dict[str, Any] | None = None) -> None:
        kind = _audit_kind(exc) or "denied"
        notice = AuditNotice(kind=kind, actor=actor, task_id=task_id, code=exc.code, detail={"message": exc.message, **(detail or {})})
        await self.notice(notice)

    async def catalog_entries(self, *, timeout: float = 10.0) -> list[CatalogEntry]:
        """The catalog's current agents and skills, read at each admission (a removal
        applies to the next task at once)."""
        try:
            async with asyncio.timeout(timeout):
                if self._catalog is None:
                    self._catalog = await Catalog.open(self.bus.js, self.bus.subjects.catalog_bucket)
                return await self._catalog.entries()
        except TimeoutError:
            raise BusTimeout(f"reading the agents and skills catalog took over {timeout:g}s; is JetStream up?") from None

    async def offered_catalog(self, caller: Caller) -> dict[str, list[dict[str, Any]]]:
        """The agents and skills ``caller``'s key may ask for, with their descriptions."""
        profile = await self.store.get_profile(caller.profile)
        entries = await self.catalog_entries()
        agents, skills = offered_catalog(profile, entries)
        by_key = {(e.kind, e.name): e for e in entries}

        def item(kind: CatalogKind, name: str) -> dict[str, Any]:
            entry = by_key.get((kind, name))
            if entry is None:
                return {"name": name, "description": BUILTIN_AGENT_DESCRIPTIONS.get(name, ""), "builtin": True}
            return {"name": name, "description": entry.description, "builtin": False, "sha256": entry.sha256}

        return {"agents": [item("agent", n) for n in agents], "skills": [item("skill", n) for n in skills]}

    async def notice(self, notice: AuditNotice) -> None:
        try:
            await self.bus.publish(self.bus.subjects.audit(notice.kind), notice, attempts=3)
        except TaskbusError as exc:  # the refusal itself must still reach the caller
            logger.error("audit notice %s not published: %s", notice.kind, exc.message)

    # ------------------------------------------------------------------ submit

    async def submit(self, caller: Caller, request: Request, *, via: str = "mcp", idempotency_key: str | None = None) -> Submission:
        """Admit ``request`` for ``caller`` and publish its job; raise the refusal otherwise.

        With ``idempotency_key`` the (key, id) pair is claimed first (``SubmitClaims``):
        a repeat, concurrent or later, gets the first request's Submission back.
        """
        try:
            if not idempotency_key:
                return await self._admit(caller, request, via, new_task_id())

            async def admit(task_id: str, takeover: bool) -> dict[str, Any]:
                if takeover and (earlier := await self._ended_earlier(caller, task_id)) is not None:
                    return earlier._asdict()
                return (await self._admit(caller, request, via, task_id))._asdict()

            fingerprint = hashlib.sha256(canonical(request)).hexdigest()
            return Submission(**await self._claims.once(caller.key_id, idempotency_key, fingerprint, admit))
        except NatsError as exc:  # NATS away or electing a leader: a clear refusal, not "unexpected"
            logger.warning("admission for %s failed on NATS: %r", caller.key_id, exc)
            raise BusError(f"the bus did not answer while admitting this request ({type(exc).__name__}); retry in a few seconds") from None

    async def _ended_earlier(self, caller: Caller, task_id: str) -> Submission | None:
        """A stale claim's task that already ended (its admission was undone, or it ran): the
        repeat gets that task back rather than a second admission under the same id."""
        found = await self.bus.last_event(task_id)
        if found is None or not isinstance(found[1], Finished):
            return None
        try:
            record = await self.store.get_task(task_id)
        except NotFound:
            return None
        if record.key_id != caller.key_id:
            return None
        self.followers.follow(task_id)  # reads the stream: the caller's wait sees its ``finished``
        return Submission(
            task_id, self.bus.subjects.events(task_id), record.model or "", "the earlier request with this id", record.reserved_usd
        )

    async def _admit(self, caller: Caller, request: Request, via: str, task_id: str) -> Submission:
        started = time.perf_counter()
        kind = request_kind(request)
        accepted: Accepted | None = None  # set once admission starts writing (from then on, undo on failure)
        try:
            validate_request(request, max_file_bytes=self.settings.artifact_max_bytes)
            profile, budget = await self.store.begin_request(caller.key_id, caller.profile)
            key = self._cache_key(caller, profile, request)
            if key is not None and (hit := await self._cache.get(key)) is not None:
                return await self._answer_from_cache(caller, request, task_id, hit, via=via)
            cheapest = cheapest_call_usd(request, profile.models, self.settings.prices)
            check_can_pay(budget, cheapest)
            if request.max_cost_usd is not None and (request.max_cost_usd <= 0 or request.max_cost_usd < cheapest):
                raise BudgetExceeded(
                    f"max_cost_usd ${request.max_cost_usd:.6f} cannot pay for the cheapest possible call (${cheapest:.6f}); raise it",
                    needed=cheapest,
                )
            route = self._route(profile, budget.remaining_usd, request)
            policy = resolve_policy(
                profile,
                request,
                task_id=task_id,
                key_id=caller.key_id,
                model=route.model,
                settings=self.settings,
                routing_reason=route.reason,
                budget_remaining=route.remaining_usd,
                realpath=project_realpath,
                catalog=await self.catalog_entries() if kind == "task" else None,
            )
            check_job_size(policy, request, self.settings.max_message_bytes)
            accepted = Accepted(
                task_id=task_id,
                seq=1,
                ts=utcnow(),
                kind=kind,
                key_id=caller.key_id,
                profile=caller.profile,
                model=policy.model,
                routing_reason=route.reason,
            )
            await self.store.admit(caller.key_id, task_id, policy.max_cost_usd, profile=caller.profile, kind=kind, model=policy.model)
        except REFUSALS as exc:  # admit's own refusals come from its compare-and-set: nothing was written
            await self.audit(exc, actor=caller.key_id, task_id=task_id, detail={"via": via, "kind": kind})
            logger.info("refused %s for %s: %s", kind, caller.key_id, exc.code)
            raise
        except BaseException as exc:
            if accepted is not None:
                self._undo.start(accepted, exc)
            raise
        if key is not None:
            self.followers.cache_answer(task_id, key, route.reason)
        events = self.bus.subjects.events(task_id)
        try:
            job = Job(task_id=task_id, policy=policy, request=request, signature=sign_job(task_id, policy, request, self._secret))
            self.followers.follow(task_id, fresh=True)  # its inbox is open before the first event is published
            await self.bus.publish(events, accepted, msg_id=f"{task_id}-1")
            await self.bus.publish(self.bus.subjects.jobs(kind), job, msg_id=task_id)
        except BaseException as exc:
            self._undo.start(accepted, exc)
            raise
        logger.info(
            "accepted %s %s for %s on %s (%.1f ms)",
            kind,
            task_id,
            caller.key_id,
            policy.model,
            (time.perf_counter() - started) * 1000,
        )
        return Submission(task_id, events, policy.model, route.reason, policy.max_cost_usd)

    def _cache_key(self, caller: Caller, profile: Profile, request: Request) -> str | None:
        if isinstance(request, CompleteRequest) and cacheable(request, profile.cache_completions):
            return cache_key(caller.profile, request)
        return None

    async def _answer_from_cache(self, caller: Caller, request: Request, task_id: str, hit: CachedCompletion, *, via: str) -> Submission:
        """A cache hit is a task like any other: registered (concurrency applies, $0 reserved),
        audited, and answered with ``accepted`` + ``finished`` on its events subject."""
        reason = f"cache hit (answer of task {hit.task_id}); {hit.routing_reason}"
        accepted = Accepted(
            task_id=task_id,
            seq=1,
            ts=utcnow(),
            kind="complete",
            key_id=caller.key_id,
            profile=caller.profile,
            model=hit.model,
            routing_reason=reason,
        )
        events = self.bus.subjects.events(task_id)
        try:
            await self.store.admit(caller.key_id, task_id, 0.0, profile=caller.profile, kind="complete", model=hit.model)
        except REFUSALS:
            raise
        except BaseException as exc:
            self._undo.start(accepted, exc)
            raise
        try:
            self.followers.follow(task_id, fresh=True)
            await self.bus.publish(events, accepted, msg_id=f"{task_id}-1")
            await self.bus.publish(
                events,
                Finished(
                    task_id=task_id,
                    seq=2,
                    ts=utcnow(),
                    status="succeeded",
                    result=hit.text,
                    reason="cached",
                    usage=hit.usage,
                    cost_usd=0.0,
                    model=hit.model,
                ),
                msg_id=f"{task_id}-2",
            )
        except BaseException as exc:
            self._undo.start(accepted, exc)
            raise
        await self.notice(
            AuditNotice(
                kind="cache_hit",
                actor=caller.key_id,
                task_id=task_id,
                detail={"via": via, "original_task_id": hit.task_id, "model": hit.model},
            )
        )
        logger.info("answered %s for %s from the cache (task %s)", task_id, caller.key_id, hit.task_id)
        return Submission(task_id, events, hit.model, reason, 0.0, cached=True)

    def _route(self, profile: Profile, remaining: float | None, request: Request) -> _Routed:
        cap = request.max_cost_usd if request.max_cost_usd is not None else profile.max_cost_per_task_usd
        model, reason = route_model(request, allowed=profile.models, prices=self.settings.prices, remaining_usd=remaining, max_cost_usd=cap)
        return _Routed(model, reason, remaining)

    # ------------------------------------------------------------------ following

    async def _on_event(self, event: Event) -> None:
        """Every event a follower hands to its watch."""
        if isinstance(event, Started):
            await self.store.update_task(event.task_id, "running")

    async def cache_written(self, task_id: str, *, timeout: float = 5.0) -> None:
        """Wait (bounded) until a cacheable task's answer is in the cache (``Followers``)."""
        await self.followers.cache_written(task_id, timeout=timeout)

    def live(self, task_id: str) -> TaskWatch:
        """The in-memory watch of a task this process submitted or follows."""
        return self.followers.follow(task_id)

    # ------------------------------------------------------------------ queries (own tasks only)

    async def task_record(self, caller: Caller, task_id: str) -> TaskRecord:
        try:
            record: TaskRecord | None = await self.store.get_task(task_id)
        except NotFound as exc:
            if getattr(exc, "expired", False):  # said from the id's own time: reveals nothing about the task
                raise
            record = None
        if record is None or record.key_id != caller.key_id:
            raise NotFound(f"no task {task_id} for this key; list yours with list_tasks", task_id=task_id)
        return record

    async def watch(self, caller: Caller, task_id: str) -> TaskWatch:
        """The live watch of one of the caller's tasks (replayed from the stream if needed)."""
        record = await self.task_record(caller, task_id)
        return await self.followers.watch(task_id, final=record.status in FINAL)

    async def list_tasks(self, caller: Caller, *, status: str | None = None, limit: int = 20) -> list[TaskRecord]:
        return await self.store.list_tasks(caller.key_id, status=status, limit=limit)

    async def read_artifact(self, caller: Caller, task_id: str, path: str) -> bytes:
        await self.task_record(caller, task_id)
        store = await self.bus.js.object_store(self.bus.subjects.artifacts_bucket)
        try:
            result = await store.get(f"{task_id}/{path}")
        except Exception:
            raise NotFound(f"task {task_id} has no artifact {path!r}; see the task's artifact list", task_id=task_id) from None
        return result.data or b""

    # ------------------------------------------------------------------ cancel

    async def cancel(self, caller: Caller, task_id: str, *, reason: str = "cancelled by caller", actor: str | None = None) -> str:
        """Ask the runner holding ``task_id`` to stop; returns the status known now."""
        record = await self.task_record(caller, task_id)
        if record.status in FINAL:
            return record.status
        await self.bus.nc.publish(self.bus.subjects.control(task_id), encode(Cancel(task_id=task_id, reason=reason)))
        await self.bus.nc.flush(timeout=5)
        await self.notice(AuditNotice(kind="task_cancelled", actor=actor or caller.key_id, task_id=task_id, detail={"reason": reason}))
        await self._finish_if_queued(task_id, reason)
        logger.info("cancel requested for %s by %s", task_id, caller.key_id)
        return "cancelling"

    async def _finish_if_queued(self, task_id: str, reason: str) -> None:
        """A job no runner has started yet ends ``cancelled`` here (only while ``accepted`` is
        its last event; otherwise the runner handles the cancel)."""
        finished = Finished(task_id=task_id, seq=2, ts=utcnow(), status="cancelled", reason="cancelled_before_start", result=reason)
        try:
            await finish_unstarted(self.bus, finished)
        except Exception as exc:  # the runner, if any, still gets the cancel on the control subject
            logger.debug("task %s: not ended here (%s); the runner cancels it", task_id, exc)
