"""Redaction of anything shaped like a credential, before it becomes an event, a log
line or an audit row. Used by the gateway, the server and the audit writer."""

from __future__ import annotations

import re
from typing import Any

REDACTED = "[REDACTED]"

_PATTERNS = [
    re.compile(r"\btb_[A-Za-z0-9_-]{20,}"),  # taskbus API keys
    re.compile(r"\bsk-ant-[A-Za-z0-9_-]{10,}"),  # Anthropic keys
    re.compile(r"\bsk-[A-Za-z0-9]{20,}"),  # other provider keys
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]{12,}"),
    re.compile(r"(?i)((?:api[_-]?key|x-api-key|authorization|password|secret|token)[\"']?\s*[:=]\s*[\"']?)[^\s\"',}]{8,}"),
    re.compile(r"\bAKIA[0-9A-Z]{16}\b"),  # AWS access key ids
    re.compile(r"\bgh[pousr]_[A-Za-z0-9]{30,}"),  # GitHub tokens
]


def redact(text: str, extra: list[str] | tuple[str, ...] = ()) -> str:
    """Replace credential-shaped substrings (and every exact string in ``extra``)."""
    for secret in extra:
        if secret and len(secret) >= 6:
            text = text.replace(secret, REDACTED)
    for pattern in _PATTERNS:
        text = pattern.sub(lambda m: m.group(1) + REDACTED, text) if pattern.groups else pattern.sub(REDACTED, text)
    return text


def redact_obj(value: Any, extra: list[str] | tuple[str, ...] = ()) -> Any:
    """``redact`` applied to every string inside dicts, lists and tuples."""
    if isinstance(value, str):
        return redact(value, extra)
    if isinstance(value, dict):
        return {k: redact_obj(v, extra) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(redact_obj(v, extra) for v in value)
    return value


def safe_url(url: str) -> str:
    """``url`` without a password in it (``nats://user:***@host``)."""
    out = []
    for part in url.split(","):
        scheme, sep, rest = part.partition("://")
        if sep and "@" in rest:
            userinfo, _, host = rest.rpartition("@")
            user = userinfo.split(":", 1)[0]
            out.append(f"{scheme}://{user}:***@{host}" if ":" in userinfo else f"{scheme}://***@{host}")
        else:
            out.append(part)
    return ",".join(out)
