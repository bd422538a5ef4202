"""NATS over TLS: the client's SSL context from Settings, and what a TLS failure means.

``TASKBUS_NATS_TLS_CA`` (a private CA), ``TASKBUS_NATS_TLS_CERT``/``_KEY`` (mutual TLS) or a
``tls://`` URL turn TLS on for every connection a process makes (``Bus.for_settings``,
``connect_options``). With TLS on, the client refuses a server that does not require TLS
before it sends anything: nats-py alone would send its CONNECT (with the password) in
plaintext to a server, or a man in the middle, whose INFO does not ask for TLS.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client as NatsClient
from nats.errors import Error as NatsError

from ._errors import ConfigError
from ._settings import Settings

PLAINTEXT_REFUSED = "nats: the server does not require TLS; refusing to connect in plaintext"


def wants_tls(settings: Settings) -> bool:
    """True when ``settings`` ask for TLS to NATS (a CA, a client certificate or a tls:// URL)."""
    urls = [part.strip().lower() for part in settings.nats_url.split(",")]
    return bool(settings.nats_tls_ca or settings.nats_tls_cert or settings.nats_tls_key) or any(u.startswith("tls://") for u in urls)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The client SSL context of ``settings`` (None when TLS is not asked for): TLS 1.2 or
    later, the server's certificate verified against ``nats_tls_ca`` (else the system store)
    with its host name checked, and the client certificate when one is set.

    Raises ConfigError naming the setting whose file is missing, unreadable or not PEM."""
    if not wants_tls(settings):
        return None
    if bool(settings.nats_tls_cert) != bool(settings.nats_tls_key):
        given, missing = (
            ("TASKBUS_NATS_TLS_CERT", "TASKBUS_NATS_TLS_KEY")
            if settings.nats_tls_cert
            else ("TASKBUS_NATS_TLS_KEY", "TASKBUS_NATS_TLS_CERT")
        )
        raise ConfigError(missing, f"{given} is set but {missing} is not: mutual TLS needs both the certificate and its key")
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.nats_tls_ca or None)
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            "TASKBUS_NATS_TLS_CA", f"cannot load the CA file {settings.nats_tls_ca!r} ({_reason(exc)}): give a readable PEM file"
        ) from None
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    if settings.nats_tls_cert:
        try:
            context.load_cert_chain(settings.nats_tls_cert, settings.nats_tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise ConfigError(
                "TASKBUS_NATS_TLS_CERT",
                f"cannot load the client certificate {settings.nats_tls_cert!r} with its key {settings.nats_tls_key!r} "
                f"({_reason(exc)}): give readable PEM files of one key pair (the key unencrypted)",
            ) from None
    return context


def tls_options(settings: Settings) -> dict[str, Any]:
    """``nats.connect`` keyword arguments for TLS (empty when TLS is off)."""
    context = tls_context(settings)
    return {"tls": context} if context is not None else {}


class TlsOnlyClient(NatsClient):
    """A nats-py client that will not send its CONNECT (credentials) over plaintext: the
    server's INFO must require TLS, so that nats-py has upgraded the connection first."""

    def _connect_command(self) -> bytes:
        if not self._server_info.get("tls_required"):
            raise NatsError(PLAINTEXT_REFUSED)
        return super()._connect_command()


def tls_failure(exc: BaseException) -> str | None:
    """What a connection error says about TLS, as the fix the operator needs; None when it
    is not a TLS failure that retrying cannot fix (a handshake cut short is retried)."""
    text = str(exc)
    lowered = text.lower()
    if isinstance(exc, ssl.SSLCertVerificationError) or "certificate verify failed" in lowered:
        reason = getattr(exc, "verify_message", "") or text
        return (
            f"its certificate does not verify ({reason}): set TASKBUS_NATS_TLS_CA to the PEM file of the CA "
            "that signed the NATS servers' certificates, and use the host name the certificate names in TASKBUS_NATS_URL"
        )
    if PLAINTEXT_REFUSED in text:
        return (
            "the server does not require TLS, so nothing was sent: enable the `tls {}` block of nats-server "
            "(docs/multi-host.md), or unset TASKBUS_NATS_TLS_CA/_CERT/_KEY and use a nats:// URL"
        )
    if isinstance(exc, ssl.SSLError) and " alert " in lowered:  # the server refused the handshake (not a dropped one)
        return (
            f"the TLS handshake failed ({_reason(exc)}); if the server requires client certificates "
            "(verify: true), set TASKBUS_NATS_TLS_CERT and TASKBUS_NATS_TLS_KEY"
        )
    return None


def _reason(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc) or type(exc).__name__


@dataclass(frozen=True)
class TlsState:
    """What a live connection's TLS session says (for ``taskbus doctor``)."""

    version: str
    """The protocol version, e.g. ``TLSv1.3``."""
    server_subject: str
    """The common name (or whole subject) of the certificate the server presented."""
    server_not_after: float
    """When that certificate expires (seconds since the epoch)."""


def connection_tls(nc: NatsClient) -> TlsState | None:
    """The TLS session of ``nc``'s current connection, None when it is plaintext."""
    writer = getattr(nc._transport, "_io_writer", None)  # nats-py exposes neither its socket nor its TLS session
    ssl_object = writer.get_extra_info("ssl_object") if writer is not None else None
    if ssl_object is None:
        return None
    cert = ssl_object.getpeercert() or {}
    subject = dict(pair[0] for pair in cert.get("subject", ()))
    not_after = cert.get("notAfter")
    return TlsState(
        version=ssl_object.version() or "?",
        server_subject=str(subject.get("commonName") or subject or "?"),
        server_not_after=ssl.cert_time_to_seconds(not_after) if isinstance(not_after, str) else 0.0,
    )
