"""The optional completion cache: a JetStream KV bucket keyed by a hash of the request.

Only deterministic requests are cached (``temperature == 0``), and only when the call
(``cache=true``) or the caller's profile (``cache_completions``) asks for it. Entries
are per profile, so two profiles with different allowed models never share answers.
A cache failure is logged and treated as a miss: it never fails a completion.
"""

from __future__ import annotations

import hashlib
import logging
from typing import Any

import msgspec

from bus import Bus, CompleteRequest, Usage, canonical

logger = logging.getLogger(__name__)


class CachedCompletion(msgspec.Struct, frozen=True, kw_only=True):
    text: str
    model: str
    routing_reason: str
    usage: Usage
    cost_usd: float
    task_id: str


def cacheable(request: CompleteRequest, profile_opt_in: bool) -> bool:
    return request.temperature == 0 and (request.cache or profile_opt_in)


def cache_key(profile: str, request: CompleteRequest) -> str:
    temperature = None if request.temperature is None else float(request.temperature)  # 0 and 0.0: one key
    body = msgspec.structs.replace(request, cache=False, max_cost_usd=None, temperature=temperature)
    digest = hashlib.sha256(canonical({"profile": profile, "request": body})).hexdigest()
    return f"c_{digest}"


class CompletionCache:
    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self._kv: Any = None

    async def _bucket(self) -> Any:
        if self._kv is None:
            self._kv = await self.bus.js.key_value(self.bus.subjects.cache_bucket)
        return self._kv

    async def get(self, key: str) -> CachedCompletion | None:
        try:
            entry = await (await self._bucket()).get(key)
        except Exception:  # KeyNotFoundError, or the bucket is unavailable
            return None
        try:
            return msgspec.json.decode(entry.value or b"", type=CachedCompletion)
        except msgspec.DecodeError:
            return None

    async def put(self, key: str, value: CachedCompletion) -> None:
        try:
            await (await self._bucket()).put(key, msgspec.json.encode(value))
        except Exception as exc:
            logger.warning("completion cache write failed: %s", exc)
