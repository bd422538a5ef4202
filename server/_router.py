"""The model auto-router: rule-based, explainable, constrained by policy and money.

``route_model(request, ...)`` returns a ``Route(model, reason)``. The rules, in order:

1. An explicit model (not ``"auto"``) is used as given (the policy check that follows
   decides whether it is allowed).
2. A wanted tier (0 = small/fast, 1 = balanced, 2 = most capable) from the request:
   ``effort`` when given (low 0, medium 1, high 2); otherwise tier 0, raised to 1 for an
   agentic task, for code signals (fences, ``def``/``class``/``import``, tracebacks,
   source file names), for multi-step signals (numbered steps, "step by step",
   "refactor", "design", ...) or for a prompt over 8k tokens; raised to 2 when code and
   multi-step signals meet in a task, or for a prompt over 50k tokens.
3. The allowed model closest to that tier: the most capable allowed one at or below
   it, else the least capable one above it.
4. Money: the estimated worst-case cost of the call on that model must fit the
   remaining budget and the cost cap; otherwise step down to cheaper allowed models
   (the reason says so). When nothing fits, the cheapest allowed model is used and the
   budget reservation decides.

Tiers come from the model family (haiku 0, sonnet 1, opus 2); unknown models are
ranked by price. Pure and synchronous: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from bus import CompleteRequest, ModelPrice, PolicyDenied, Request, TaskRequest

TIER_NAMES = ("small", "balanced", "capable")
LARGE_PROMPT_TOKENS = 8_000
HUGE_PROMPT_TOKENS = 50_000
CHARS_PER_TOKEN = 4
SCAN_CHARS = 40_000
DEFAULT_COMPLETE_OUTPUT = 1_024
TASK_TURNS_ESTIMATE = 4
TASK_CONTEXT_TOKENS = 15_000
TASK_OUTPUT_PER_TURN = 1_000

_CODE = re.compile(
    r"```|\b(def|class|import|function|return|const|struct|fn|public static)\b|Traceback \(most recent"
    r"|\b[\w-]{1,64}\.(py|js|ts|go|rs|java|c|cpp|rb|sh|toml|yaml|json)\b|[{};][ \t]*$",
    re.MULTILINE,
)
_MULTI = re.compile(
    r"(?i)\bstep[- ]by[- ]step\b|\bfirst\b[^\n]{0,400}?\bthen\b|^[ \t]*(\d+[.)]|[-*])[ \t]+\S[^\n]*\n[ \t]*(\d+[.)]|[-*])[ \t]+\S"
    r"|\b(refactor|implement|design|architect|migrate|plan|debug|investigate|analy[sz]e|write tests)\b",
    re.MULTILINE,
)


class Route(NamedTuple):
    model: str
    reason: str


def request_text(request: Request) -> str:
    if isinstance(request, TaskRequest):
        return request.description
    parts = [request.system or "", request.prompt or ""]
    parts.extend(m.content for m in request.messages or [])
    return "\n".join(p for p in parts if p)


def estimate_tokens(text: str) -> int:
    return max(1, len(text) // CHARS_PER_TOKEN)


def model_tier(model: str, prices: Mapping[str, ModelPrice]) -> int:
    name = model.lower()
    for tier, family in ((0, "haiku"), (1, "sonnet"), (2, "opus")):
        if family in name:
            return tier
    price = prices.get(model)
    if price is None:
        return 1
    per_mtok = price.input + price.output
    return 0 if per_mtok < 10 else 1 if per_mtok < 25 else 2


def estimate_cost(request: Request, model: str, prices: Mapping[str, ModelPrice]) -> float:
    """Worst-case USD estimate of running ``request`` on ``model`` (0 when unpriced)."""
    price = prices.get(model)
    if price is None:
        return 0.0
    tokens_in = estimate_tokens(request_text(request))
    if isinstance(request, CompleteRequest):
        tokens_out = request.max_tokens or DEFAULT_COMPLETE_OUTPUT
    else:
        turns = min(request.max_turns or TASK_TURNS_ESTIMATE, TASK_TURNS_ESTIMATE)
        tokens_in = (tokens_in + TASK_CONTEXT_TOKENS) * turns
        tokens_out = TASK_OUTPUT_PER_TURN * turns
    return (tokens_in * price.input + tokens_out * price.output) / 1_000_000


def cheapest_call_usd(request: Request, allowed: Iterable[str], prices: Mapping[str, ModelPrice]) -> float:
    """The least any call for ``request`` can cost: its prompt in and one token out on the
    cheapest allowed model (0 when no allowed model is priced)."""
    tokens_in = estimate_tokens(request_text(request))
    costs = [(tokens_in * p.input + p.output) / 1_000_000 for m in allowed_models(allowed, prices) if (p := prices.get(m)) is not None]
    return min(costs, default=0.0)


def wanted_tier(request: Request) -> tuple[int, list[str]]:
    """The tier the request asks for, and the signals that led there."""
    if request.effort is not None:
        tier = {"low": 0, "medium": 1, "high": 2}[request.effort]
        return tier, [f"effort={request.effort}"]
    text = request_text(request)
    tokens = estimate_tokens(text)
    signals: list[str] = []
    tier = 0
    is_task = isinstance(request, TaskRequest)
    sample = text if len(text) <= SCAN_CHARS else text[: SCAN_CHARS // 2] + "\n" + text[-SCAN_CHARS // 2 :]
    code = bool(_CODE.search(sample))
    multi = bool(_MULTI.search(sample))
    rules = [
        (is_task, 1, "agentic task"),
        (code, 1, "code"),
        (multi, 1, "multi-step"),
        (tokens > LARGE_PROMPT_TOKENS, 2 if tokens > HUGE_PROMPT_TOKENS else 1, f"{tokens // 1000}k-token prompt"),
    ]
    for matched, at_least, signal in rules:
        if matched:
            tier = max(tier, at_least)
            signals.append(signal)
    if is_task and code and multi:
        tier = 2
    if not signals:
        signals.append(f"short plain prompt (~{tokens} tokens)")
    return tier, signals


def allowed_models(allowed: Iterable[str], prices: Mapping[str, ModelPrice]) -> list[str]:
    """Expand ``*`` to every priced model; keep order stable and unique."""
    out: list[str] = []
    for model in allowed:
        for name in sorted(prices) if model == "*" else [model]:
            if name not in out:
                out.append(name)
    return out


def route_model(
    request: Request,
    *,
    allowed: Iterable[str],
    prices: Mapping[str, ModelPrice],
    remaining_usd: float | None = None,
    max_cost_usd: float | None = None,
) -> Route:
    """Pick the model for ``request``; see the module docstring for the rules."""
    if request.model != "auto":
        return Route(request.model, f"model {request.model} requested by the caller")
    candidates = allowed_models(allowed, prices)
    if not candidates:
        raise PolicyDenied(
            "the profile allows no model, so model='auto' has nothing to choose from",
            permission="models",
        )
    tier, signals = wanted_tier(request)

    def rank(model: str) -> tuple[int, float]:
        price = prices.get(model)
        return model_tier(model, prices), (price.input + price.output) if price else 0.0

    ordered = sorted(candidates, key=rank)  # cheapest / least capable first
    at_or_below = [m for m in ordered if model_tier(m, prices) <= tier]
    choice = at_or_below[-1] if at_or_below else ordered[0]
    reason = f"auto: {', '.join(signals)} -> {TIER_NAMES[tier]} tier; {choice}"
    if model_tier(choice, prices) != tier:
        reason += " is the closest allowed model"

    limits = [v for v in (remaining_usd, max_cost_usd) if v is not None]
    if limits:
        available = min(limits)
        cost = estimate_cost(request, choice, prices)
        if cost > available:
            cheaper = [m for m in ordered[: ordered.index(choice)] if estimate_cost(request, m, prices) <= available]
            if cheaper:
                down = cheaper[-1]
                reason += f"; downgraded to {down} because {choice} (est. ${cost:.4f}) does not fit the ${available:.4f} left"
                choice = down
            elif choice != ordered[0]:
                reason += f"; downgraded to {ordered[0]} (cheapest allowed): only ${available:.4f} left"
                choice = ordered[0]
            else:
                reason += f"; est. ${cost:.4f} is more than the ${available:.4f} left"
    return Route(choice, reason)
