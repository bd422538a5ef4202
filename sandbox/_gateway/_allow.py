"""What the gateway forwards: an allowlist of request fields, beta flags and queries.

The gateway forwards only what it understands. A request with anything else is refused
(``request_refused``), never forwarded with the fields removed: a field the meter cannot
price (``service_tier``, ``speed``, ``inference_geo``), a field that makes the model API act
for the agent (``mcp_servers`` connects the API to URLs of the agent's choosing,
``container``), or a beta flag that changes what a call costs (1M context, 1-hour cache
writes) would otherwise slip past the cost cap or the sandbox.

The lists were taken from what Claude Code 2.1.197 really sends (recorded against the
scripted model with the sonnet, opus and haiku models, tools, thinking and
``--json-schema``), plus the documented Messages API fields that change nothing the
meter prices. A beta flag outside ``KNOWN_BETAS`` is allowed only when the operator
lists it in ``Settings.gateway_extra_betas`` (and so vouches that it does not change
prices).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from bus import PolicyDenied

__all__ = ["KNOWN_BETAS", "MESSAGES_FIELDS", "check_betas", "check_body", "check_query"]

MESSAGES_FIELDS = frozenset(
    {
        # sent by Claude Code 2.1.x
        "model",
        "messages",
        "system",
        "max_tokens",
        "metadata",
        "stream",
        "tools",
        "thinking",
        "context_management",
        "output_config",
        # documented Messages API fields that change neither price nor reach
        "stop_sequences",
        "temperature",
        "top_k",
        "top_p",
        "tool_choice",
    }
)
"""Top-level fields of a ``/v1/messages`` or ``/v1/messages/count_tokens`` body."""

KNOWN_BETAS = frozenset(
    {
        "claude-code-20250219",
        "interleaved-thinking-2025-05-14",
        "thinking-token-count-2026-05-13",
        "context-management-2025-06-27",
        "prompt-caching-scope-2026-01-05",
        "effort-2025-11-24",
        "mid-conversation-system-2026-04-07",  # with opus
    }
)
"""``anthropic-beta`` values priced at the ordinary rates (what Claude Code sends)."""

ALLOWED_QUERIES = frozenset({"", "beta=true"})
ALLOWED_CACHE_TTLS = frozenset({None, "5m"})
"""Cache writes are priced at the 5-minute rate; a 1-hour write costs more."""
_MAX_SHOWN = 60


def _shown(value: str) -> str:
    return repr(value if len(value) <= _MAX_SHOWN else value[:_MAX_SHOWN] + "...")


def check_query(query: str) -> None:
    if query not in ALLOWED_QUERIES:
        raise PolicyDenied(f"query {_shown(query)} is not forwarded by the taskbus model gateway")


def check_betas(headers: Iterable[tuple[str, str]], extra: frozenset[str]) -> None:
    """Every ``anthropic-beta`` value (comma separated, any number of headers) is allowed."""
    for name, value in headers:
        if name.lower() != "anthropic-beta":
            continue
        for raw in value.split(","):
            flag = raw.strip()
            if flag and flag not in KNOWN_BETAS and flag not in extra:
                raise PolicyDenied(
                    f"anthropic-beta {_shown(flag)} is not allowed by the taskbus model gateway (the cost meter cannot price it)"
                )


def _cache_controls(value: Any, depth: int = 0) -> Iterable[Any]:
    """Every ``cache_control`` value in a JSON tree (to a bounded depth)."""
    if depth > 64:
        return
    if isinstance(value, dict):
        if "cache_control" in value:
            yield value["cache_control"]
        for item in value.values():
            yield from _cache_controls(item, depth + 1)
    elif isinstance(value, list):
        for item in value:
            yield from _cache_controls(item, depth + 1)


def check_body(body: dict[str, Any]) -> None:
    """Refuse fields outside ``MESSAGES_FIELDS`` and cache writes the meter cannot price."""
    unknown = sorted(key for key in body if key not in MESSAGES_FIELDS)
    if unknown:
        listed = ", ".join(_shown(key) for key in unknown[:10])
        raise PolicyDenied(f"request fields not forwarded by the taskbus model gateway: {listed}")
    for field in ("system", "messages", "tools"):
        for control in _cache_controls(body.get(field)):
            ttl = control.get("ttl") if isinstance(control, dict) else None
            if ttl not in ALLOWED_CACHE_TTLS:
                raise PolicyDenied(
                    f"cache_control ttl {_shown(str(ttl))} is not allowed by the taskbus model gateway "
                    "(the cost meter prices 5-minute cache writes only)"
                )
