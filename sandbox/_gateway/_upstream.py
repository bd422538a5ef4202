"""The model API as the gateway and the providers see it: one client (one pool of
keep-alive connections) per runner, the real credential, and the header allowlist.

Requests toward the upstream carry only an allowlist of the client's headers plus the
real credential (``x-api-key``), and ask for ``accept-encoding: identity`` so the usage
in responses can be read as they pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import msgspec

from bus import ConfigError, Settings, redact

from ._client import HttpResponse, ModelError, UpstreamClient
from ._filter import encode_body

__all__ = ["DEFAULT_UPSTREAM", "FORWARDED_REQUEST_HEADERS", "Upstream"]

logger = logging.getLogger(__name__)

DEFAULT_UPSTREAM = "https://api.anthropic.com"
FORWARDED_REQUEST_HEADERS = frozenset({"content-type", "accept", "anthropic-version", "anthropic-beta", "user-agent", "x-app"})
"""Client headers passed upstream; every other header (credentials, cookies, session
ids, SDK telemetry) is dropped."""


class _Count(msgspec.Struct):
    input_tokens: int


_decode_count = msgspec.json.Decoder(_Count).decode


class Upstream:
    """``async with Upstream(settings) as up:`` -- the model API and its real credential."""

    def __init__(
        self,
        settings: Settings,
        *,
        base_url: str | None = None,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        count_timeout: float = 15.0,
        max_connections: int = 200,
    ) -> None:
        url = (base_url or settings.upstream_url or DEFAULT_UPSTREAM).rstrip("/")
        if not url.startswith(("http://", "https://")):
            raise ConfigError("TASKBUS_UPSTREAM_URL", f"expected an http(s) URL, got {url!r}")
        self.base_url = url
        self._api_key = settings.upstream_api_key
        self._count_timeout = count_timeout
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._max_connections = max_connections
        self._client: UpstreamClient | None = None

    @property
    def secrets(self) -> tuple[str, ...]:
        """Strings that must never leave the runner (for ``bus.redact``)."""
        return (self._api_key,) if self._api_key else ()

    def redact(self, text: str) -> str:
        return redact(text, extra=self.secrets)

    async def __aenter__(self) -> Upstream:
        if self._client is None:
            self._client = UpstreamClient(
                connect_timeout=self._connect_timeout, read_timeout=self._read_timeout, max_connections=self._max_connections
            )
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> UpstreamClient:
        if self._client is None:
            raise RuntimeError("Upstream is not open; use `async with Upstream(settings)`")
        return self._client

    def headers(self, client_headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        """The headers to send upstream: the allowlisted client headers and the credential."""
        out = {name: value for name, value in client_headers if name in FORWARDED_REQUEST_HEADERS}
        out.setdefault("anthropic-version", "2023-06-01")
        out.setdefault("content-type", "application/json")
        out["accept-encoding"] = "identity"
        if self._api_key:
            out["x-api-key"] = self._api_key
        return out

    def url(self, path: str, query: str = "") -> str:
        return f"{self.base_url}{path}?{query}" if query else f"{self.base_url}{path}"

    async def open(self, path: str, query: str, content: bytes, headers: dict[str, str]) -> HttpResponse:
        """POST; returns once status and headers are in, the body unread (close it!).

        Raises UpstreamUnavailable (nothing sent) or UpstreamFailed.
        """
        return await self.client.post(self.url(path, query), headers=headers, content=content)

    async def post(
        self, path: str, query: str, content: bytes, headers: dict[str, str], *, timeout: float | None = None
    ) -> tuple[HttpResponse, bytes]:
        """POST and read the whole (small) response."""
        response = await self.client.post(self.url(path, query), headers=headers, content=content, read_timeout=timeout)
        try:
            return response, await response.aread()
        finally:
            await response.aclose()

    async def count_tokens(self, body: dict[str, Any], headers: dict[str, str], query: str = "") -> int | None:
        """Input tokens of ``body`` from ``/v1/messages/count_tokens``; None if that failed."""
        try:
            response, raw = await self.post("/v1/messages/count_tokens", query, encode_body(body), headers, timeout=self._count_timeout)
        except ModelError as exc:
            logger.warning("count_tokens failed (%s); using the fallback bound", exc.message)
            return None
        if response.status_code != 200:
            logger.warning(
                "count_tokens answered %d (%s); using the fallback bound",
                response.status_code,
                self.redact(raw[:300].decode("utf-8", "replace")),
            )
            return None
        try:
            tokens = _decode_count(raw).input_tokens
        except msgspec.DecodeError:
            tokens = -1
        if tokens < 0:
            logger.warning("count_tokens answered without a valid input_tokens; using the fallback bound")
            return None
        return tokens
