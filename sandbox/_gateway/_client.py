"""The HTTP client toward the model upstream, on httpcore2 (httpx2's transport core,
installed with httpx2 and the MCP SDK).

- The response body is relayed as it arrives (``aiter_raw``: the bytes as received; the
  request asks for ``accept-encoding: identity``); nothing is parsed here.
- Keep-alive connections per origin, at most ``max_connections`` in use at once.
- Proxies from the runner's environment, read once when the client is made:
  ``HTTPS_PROXY``/``HTTP_PROXY``/``ALL_PROXY`` and ``NO_PROXY``, with the standard
  library's rules (``urllib.request``). Only this client uses them; the sandbox's
  environment is built separately and gets none of them.
- TLS with the system's CA store (httpcore2's default context; ``SSL_CERT_FILE`` and
  ``SSL_CERT_DIR`` too). No redirects are followed and no cookies are kept.

Why not ``httpx2.AsyncClient`` itself: its request and response models cost about 0.2 ms
per request on this machine, and every gateway call makes two upstream requests; see
``_netstream.py`` for the network layer (measured in benchmarks/bench_gateway.py).

Errors are ``UpstreamUnavailable`` (no connection could be made: the request was never
sent) and ``UpstreamFailed`` (anything after that), both ``ModelError``s.
"""

from __future__ import annotations

import logging
import ssl
import urllib.request
from collections.abc import AsyncIterator, Mapping
from urllib.parse import unquote, urlsplit

import httpcore2

from bus import ModelError

from ._netstream import AsyncioBackend

__all__ = ["HttpResponse", "UpstreamClient", "UpstreamFailed", "UpstreamUnavailable", "proxy_for"]

logger = logging.getLogger(__name__)

# Nothing reached the upstream: safe to say "not sent" (a refund, a retry by the caller).
_NOT_SENT = (httpcore2.ConnectError, httpcore2.ConnectTimeout, httpcore2.PoolTimeout, httpcore2.ProxyError, httpcore2.UnsupportedProtocol)


class UpstreamUnavailable(ModelError):
    """No connection to the upstream could be made; nothing was sent."""


class UpstreamFailed(ModelError):
    """The upstream connection failed after the request was (maybe) sent."""


def _failed(exc: Exception, during: str) -> UpstreamFailed:
    if isinstance(exc, httpcore2.TimeoutException):
        return UpstreamFailed(f"the model API did not answer in time{during}")
    return UpstreamFailed(f"the model API connection failed{during} ({type(exc).__name__})")


def proxy_for(url: str, proxies: Mapping[str, str]) -> str | None:
    """The proxy URL for ``url`` given ``urllib.request.getproxies_environment()``-style
    ``proxies`` (scheme -> URL, ``no`` -> bypass list); None to connect directly."""
    parts = urlsplit(url)
    proxy = proxies.get(parts.scheme) or proxies.get("all")
    if not proxy:
        return None
    host = parts.hostname or ""
    target = f"{host}:{parts.port}" if parts.port else host
    # undocumented but in the stdlib since Python 3.0; typeshed leaves it out
    if urllib.request.proxy_bypass_environment(target, proxies):  # type: ignore[attr-defined]  # see above
        return None
    return proxy if "://" in proxy else f"http://{proxy}"


class HttpResponse:
    """Status and headers are read; the body is read with ``aiter_raw`` or ``aread``.
    Always ``aclose()`` it (a response not read to its end closes its connection)."""

    def __init__(self, response: httpcore2.Response) -> None:
        self._response = response
        self._closed = False
        self.status_code = response.status
        self.headers: list[tuple[str, str]] = [
            (name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in response.headers
        ]
        """(lower-case name, value) in the order received."""

    def header(self, name: str, default: str = "") -> str:
        for key, value in self.headers:
            if key == name:
                return value
        return default

    async def aiter_raw(self) -> AsyncIterator[bytes]:
        if self._closed:
            return
        try:
            async for chunk in self._response.aiter_stream():
                yield chunk
        except RuntimeError:  # already read to its end or closed
            return
        except httpcore2.NetworkError as exc:
            raise _failed(exc, " mid-response") from None
        except (httpcore2.TimeoutException, httpcore2.ProtocolError) as exc:
            raise _failed(exc, " mid-response") from None

    async def aread(self, limit: int = 64 * 1024 * 1024) -> bytes:
        body = bytearray()
        async for chunk in self.aiter_raw():
            body += chunk
            if len(body) > limit:
                await self.aclose()
                raise UpstreamFailed(f"the model API response is over {limit} bytes")
        return bytes(body)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await self._response.aclose()


class UpstreamClient:
    """``post`` returns once status and headers are in; one connection pool per route
    (direct, or through one proxy)."""

    def __init__(
        self,
        *,
        connect_timeout: float = 10.0,
        read_timeout: float = 600.0,
        write_timeout: float = 60.0,
        max_connections: int = 200,
        max_idle: int = 32,
        ssl_context: ssl.SSLContext | None = None,
        proxies: Mapping[str, str] | None = None,
    ) -> None:
        """``proxies``: scheme -> proxy URL and ``no`` -> bypass list; None = from the
        environment (``urllib.request.getproxies_environment()``)."""
        self._timeouts = {"connect": connect_timeout, "read": read_timeout, "write": write_timeout, "pool": read_timeout}
        self._max_connections = max_connections
        self._max_idle = max_idle
        self._backend = AsyncioBackend()
        self._ssl = ssl_context
        self._proxies = dict(urllib.request.getproxies_environment() if proxies is None else proxies)
        self._pools: dict[str | None, httpcore2.AsyncConnectionPool] = {}
        self._closed = False

    def _pool(self, url: str) -> httpcore2.AsyncConnectionPool:
        proxy = proxy_for(url, self._proxies)
        pool = self._pools.get(proxy)
        if pool is None:
            if self._ssl is None:
                self._ssl = httpcore2.default_ssl_context()
            if proxy is None:
                pool = httpcore2.AsyncConnectionPool(
                    ssl_context=self._ssl,
                    max_connections=self._max_connections,
                    max_keepalive_connections=self._max_idle,
                    network_backend=self._backend,
                )
            else:
                parts = urlsplit(proxy)
                if parts.scheme not in ("http", "https"):
                    raise UpstreamUnavailable(
                        f"the proxy for the model API is a {parts.scheme}:// proxy; only http(s) proxies are "
                        "supported: set HTTPS_PROXY to an http:// proxy, or add the host to NO_PROXY"
                    )
                auth = (unquote(parts.username), unquote(parts.password or "")) if parts.username else None
                pool = httpcore2.AsyncHTTPProxy(
                    proxy_url=parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl(),
                    proxy_auth=auth,
                    ssl_context=self._ssl,
                    max_connections=self._max_connections,
                    max_keepalive_connections=self._max_idle,
                    network_backend=self._backend,
                )
                logger.info("model API requests to %s go through the proxy %s", urlsplit(url).hostname, parts.hostname)
            self._pools[proxy] = pool
        return pool

    async def aclose(self) -> None:
        self._closed = True
        pools, self._pools = list(self._pools.values()), {}
        for pool in pools:
            await pool.aclose()

    async def post(self, url: str, *, headers: dict[str, str], content: bytes, read_timeout: float | None = None) -> HttpResponse:
        """Send a POST and return once the response status and headers are in."""
        if self._closed:
            raise UpstreamUnavailable("the upstream client is closed")
        parts = urlsplit(url)
        timeouts = self._timeouts if read_timeout is None else {**self._timeouts, "read": read_timeout}
        request = httpcore2.Request(
            b"POST",
            url,
            headers=[("host", parts.netloc.rpartition("@")[2]), *headers.items(), ("content-length", str(len(content)))],
            content=content,
            extensions={"timeout": timeouts},
        )
        try:
            response = await self._pool(url).handle_async_request(request)
        except _NOT_SENT as exc:
            port = f":{parts.port}" if parts.port else ""
            raise UpstreamUnavailable(
                f"cannot connect to the model API at {parts.scheme}://{parts.hostname}{port} ({_reason(exc)})"
            ) from None
        except (httpcore2.NetworkError, httpcore2.TimeoutException, httpcore2.ProtocolError) as exc:
            raise _failed(exc, "") from None
        return HttpResponse(response)


def _reason(exc: BaseException) -> str:
    """What went wrong, never a URL or header (the request's headers hold the real
    credential): the SSL reason of a failed handshake, else the error's own text."""
    inner: BaseException | None = exc
    while inner is not None:
        if isinstance(inner, ssl.SSLError):
            return f"{type(exc).__name__}: SSL {inner.reason or type(inner).__name__}"
        inner = inner.__cause__ or inner.__context__
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
