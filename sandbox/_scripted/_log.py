"""The request log: one JSON object per request, so tests can assert what the model saw.

Secret headers keep their name but not their value; credential-shaped strings in the
recorded user text are redacted.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import IO, Any

import msgspec

from bus import REDACTED, redact

__all__ = ["RequestLog", "read_log"]

SECRET_HEADERS = frozenset({"x-api-key", "authorization", "proxy-authorization", "cookie", "set-cookie", "x-auth-token"})


class RequestLog:
    """Appends JSON lines to ``path``; ``close()`` is safe to call twice."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file: IO[bytes] | None = self.path.open("ab")
        self._lock = threading.Lock()
        self._encoder = msgspec.json.Encoder()

    def write(self, scope: dict[str, Any], record: dict[str, Any]) -> None:
        headers = {}
        for raw_name, raw_value in scope.get("headers", ()):
            name = raw_name.decode("latin-1").lower()
            headers[name] = REDACTED if name in SECRET_HEADERS else raw_value.decode("latin-1")
        entry = {"ts": round(time.time(), 3), **record, "query": scope.get("query_string", b"").decode("latin-1")}
        if "user_text" in entry:
            entry["user_text"] = redact(entry["user_text"])
        entry["headers"] = headers
        line = self._encoder.encode(entry) + b"\n"
        with self._lock:
            if self._file is not None:
                self._file.write(line)
                self._file.flush()

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None


def read_log(path: str | Path) -> list[dict[str, Any]]:
    """Every record of a request log (for tests and tools)."""
    path = Path(path)
    if not path.exists():
        return []
    return [msgspec.json.decode(line) for line in path.read_bytes().splitlines() if line.strip()]
