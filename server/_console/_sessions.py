"""Server-side console sessions: a random id in an HttpOnly, SameSite=Strict cookie maps to
who logged in (key display prefix and profile, never the key) and a CSRF token."""

from __future__ import annotations

import hmac
import secrets
import time
from dataclasses import dataclass, field

COOKIE = "taskbus_console"
IDLE_S = 30 * 60
MAX_AGE_S = 8 * 3600
MAX_SESSIONS = 1000


@dataclass
class Session:
    key_id: str
    profile: str
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    created: float = field(default_factory=time.monotonic)
    seen: float = field(default_factory=time.monotonic)

    def csrf_ok(self, token: str | None) -> bool:
        return bool(token) and hmac.compare_digest(self.csrf.encode(), str(token).encode())


class Sessions:
    """In memory: a server restart logs everyone out."""

    def __init__(self, *, idle_s: float = IDLE_S, max_age_s: float = MAX_AGE_S) -> None:
        self._by_id: dict[str, Session] = {}
        self.idle_s = idle_s
        self.max_age_s = max_age_s

    def create(self, key_id: str, profile: str) -> tuple[str, Session]:
        self._expire()
        if len(self._by_id) >= MAX_SESSIONS:  # drop the least recently seen
            oldest = min(self._by_id, key=lambda sid: self._by_id[sid].seen)
            del self._by_id[oldest]
        sid = secrets.token_urlsafe(32)
        session = self._by_id[sid] = Session(key_id, profile)
        return sid, session

    def get(self, sid: str | None) -> Session | None:
        if not sid:
            return None
        session = self._by_id.get(sid)
        if session is None:
            return None
        now = time.monotonic()
        if now - session.seen > self.idle_s or now - session.created > self.max_age_s:
            del self._by_id[sid]
            return None
        session.seen = now
        return session

    def drop(self, sid: str | None) -> None:
        if sid:
            self._by_id.pop(sid, None)

    def _expire(self) -> None:
        now = time.monotonic()
        for sid in [s for s, v in self._by_id.items() if now - v.seen > self.idle_s or now - v.created > self.max_age_s]:
            del self._by_id[sid]
