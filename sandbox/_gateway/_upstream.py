"""The HTTP client to the model API, shared by every gateway and provider of a runner.

One ``httpx.AsyncClient`` (one connection pool) per runner. Requests toward the
upstream carry only an allowlist of the client's headers plus the real credential
(``x-api-key``); responses come back with ``accept-encoding: identity`` so the usage in
them can be read as they pass.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from types import TracebackType
from typing import Any

import httpx

from bus import ConfigError, Settings, redact

from ._filter import encode_body

__all__ = ["DEFAULT_UPSTREAM", "FORWARDED_REQUEST_HEADERS", "Upstream"]

logger = logging.getLogger(__name__)

DEFAULT_UPSTREAM = "https://api.anthropic.com"
FORWARDED_REQUEST_HEADERS = frozenset(
    {"content-type", "accept", "anthropic-version", "anthropic-beta", "user-agent", "x-app"}
)
"""Client headers passed upstream; every other header (credentials, cookies, session
ids, SDK telemetry) is dropped."""


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
        self._timeout = httpx.Timeout(connect_timeout, read=read_timeout, write=60.0, pool=60.0)
        self._limits = httpx.Limits(max_connections=max_connections, max_keepalive_connections=32)
        self._client: httpx.AsyncClient | None = None

    @property
    def secrets(self) -> tuple[str, ...]:
        """Strings that must never leave the runner (for ``bus.redact``)."""
        return (self._api_key,) if self._api_key else ()

    def redact(self, text: str) -> str:
        return redact(text, extra=self.secrets)

    async def __aenter__(self) -> Upstream:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self._timeout, limits=self._limits, follow_redirects=False, trust_env=False
            )
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("Upstream is not open; use `async with Upstream(settings)`")
        return self._client

    def headers(self, client_headers: Iterable[tuple[str, str]]) -> dict[str, str]:
        """The headers to send upstream: the allowlisted client headers and the credential."""
        out = {
            name: value
            for name, value in client_headers
            if name in FORWARDED_REQUEST_HEADERS
        }
        out.setdefault("anthropic-version", "2023-06-01")
        out.setdefault("content-type", "application/json")
        out["accept-encoding"] = "identity"
        if self._api_key:
            out["x-api-key"] = self._api_key
        return out

    def url(self, path: str, query: str = "") -> str:
        return f"{self.base_url}{path}?{query}" if query else f"{self.base_url}{path}"

    async def count_tokens(self, body: dict[str, Any], headers: dict[str, str], query: str = "") -> int | None:
        """Input tokens of ``body`` from ``/v1/messages/count_tokens``; None if that failed."""
        try:
            response = await self.client.post(
                self.url("/v1/messages/count_tokens", query),
                content=encode_body(body),
                headers=headers,
                timeout=self._count_timeout,
            )
        except httpx.HTTPError as exc:
            logger.warning("count_tokens failed (%s); using the fallback bound", type(exc).__name__)
            return None
        if response.status_code != 200:
            logger.warning(
                "count_tokens answered %d (%s); using the fallback bound",
                response.status_code, self.redact(response.text[:300]),
            )
            return None
        try:
            tokens = response.json()["input_tokens"]
        except (ValueError, KeyError, TypeError):
            tokens = None
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 0:
            logger.warning("count_tokens answered without a valid input_tokens; using the fallback bound")
            return None
        return tokens

    async def open(self, path: str, query: str, content: bytes, headers: dict[str, str]) -> httpx.Response:
        """POST and return the response with its body not yet read (close it!)."""
        request = self.client.build_request("POST", self.url(path, query), content=content, headers=headers)
        return await self.client.send(request, stream=True)
