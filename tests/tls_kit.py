"""Certificates for the NATS-over-TLS tests, made with `cryptography`: a private CA, a
server certificate for 127.0.0.1, client certificates, a stranger CA, and the nats-server
`tls {}` block that uses them (imported by name, like ci_guard)."""

from __future__ import annotations

import datetime
import ipaddress
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    stranger_ca: Path
    misnamed_cert: Path
    """Signed by the CA for host nats-1 only (not 127.0.0.1)."""
    expiring_cert: Path
    """Signed by the CA for 127.0.0.1, valid for 10 more days."""
    unmapped_cert: Path
    """A client certificate of the CA whose subject is no NATS user (key: client_key)."""


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _cert(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: tuple[x509.Name, ec.EllipticCurvePrivateKey] | None,
    *,
    ca: bool = False,
    san: list[x509.GeneralName] | None = None,
    days: int = 365,
) -> x509.Certificate:
    now = datetime.datetime.now(datetime.UTC)
    issuer_name, issuer_key = issuer or (_name(subject), key)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
    if san:
        builder = builder.add_extension(x509.SubjectAlternativeName(san), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def make_pki(folder: Path) -> Pki:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    pem = serialization.Encoding.PEM
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert("taskbus test CA", ca_key, None, ca=True)
    server_key = ec.generate_private_key(ec.SECP256R1())
    server = _cert(
        "nats-1", server_key, (ca.subject, ca_key), san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]
    )
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _cert("taskbus-runner", client_key, (ca.subject, ca_key))
    unmapped = _cert("somebody-else", client_key, (ca.subject, ca_key))
    stranger_key = ec.generate_private_key(ec.SECP256R1())
    stranger = _cert("a CA nobody trusts", stranger_key, None, ca=True)
    misnamed = _cert("nats-1", server_key, (ca.subject, ca_key), san=[x509.DNSName("nats-1")])
    expiring = _cert("nats-1", server_key, (ca.subject, ca_key), san=[x509.IPAddress(ipaddress.ip_address("127.0.0.1"))], days=10)
    return Pki(
        ca=_write(folder / "ca.pem", ca.public_bytes(pem)),
        server_cert=_write(folder / "server-cert.pem", server.public_bytes(pem)),
        server_key=_write(folder / "server-key.pem", _key_pem(server_key)),
        client_cert=_write(folder / "client-cert.pem", client.public_bytes(pem)),
        client_key=_write(folder / "client-key.pem", _key_pem(client_key)),
        stranger_ca=_write(folder / "stranger-ca.pem", stranger.public_bytes(pem)),
        misnamed_cert=_write(folder / "misnamed-cert.pem", misnamed.public_bytes(pem)),
        expiring_cert=_write(folder / "expiring-cert.pem", expiring.public_bytes(pem)),
        unmapped_cert=_write(folder / "unmapped-cert.pem", unmapped.public_bytes(pem)),
    )


def tls_block(pki: Pki, *, verify: bool, cert: Path | None = None) -> str:
    """The `tls {}` block of docs/multi-host.md for client connections."""
    return (
        "tls {\n"
        f"  cert_file: {json.dumps(str(cert or pki.server_cert))}\n"
        f"  key_file: {json.dumps(str(pki.server_key))}\n"
        f"  ca_file: {json.dumps(str(pki.ca))}\n"
        f"  verify: {'true' if verify else 'false'}\n"
        "  timeout: 5\n"
        "}\n"
    )
