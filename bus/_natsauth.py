"""NATS users per role: credentials files, bcrypt hashes and subject permissions.

``taskbus up`` (and ``EmbeddedNats(auth=...)``) runs nats-server with one user per role;
each process connects as its role. A role's credentials are a JSON file
``{"user": ..., "password": ...}`` in ``<data_dir>/nats-auth/`` (folder 0700, files 0600,
created with O_EXCL|O_NOFOLLOW, never rewritten); the server config holds only bcrypt
hashes. ``authorization_block`` is the one generator of the ``authorization`` section:
the embedded server uses it with hashes, ``taskbus up`` writes it with placeholders as a
multi-host example (docs/multi-host.md).

What a role may do (least subjects):
- server (``taskbus serve``): jobs, control, events (``accepted`` and a preempting
  ``finished`` on cancel), audit notices, the JetStream API, artifacts and cache.
- runner: events, heartbeats, its audit notices, job acks, artifacts, the job-claims KV,
  the JetStream API (it checks the streams and creates its consumers).
- audit (``taskbus audit run``): consumers on the events and audit streams, the chain
  head and alerts.
- cli (the operator: CLI commands, ``taskbus up`` itself): submit, follow events, read
  heartbeats, publish audit notices (key changes), read artifacts, and read and change the
  control plane (keys, profiles, budgets, the ledger, the task registry: three KV buckets).
  It cannot publish jobs, events or control messages.

The control-plane buckets hold key hashes, budgets and every caller's task records: the
runner and audit users are denied them explicitly (``role_denials``), even though the
JetStream API is otherwise granted to them whole.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

import bcrypt

from ._errors import ConfigError
from ._private import owned_private_dir, write_private
from ._subjects import Subjects

ROLES = ("server", "runner", "audit", "cli")
AUTH_DIR = "nats-auth"
_INBOX = "_INBOX.>"
_FLOW = "$JS.FC.>"  # flow-control replies of ordered consumers (following events, reading artifacts)


@dataclass(frozen=True)
class NatsCredentials:
    user: str
    password: str

    def __repr__(self) -> str:  # never print the password
        return f"NatsCredentials(user={self.user!r}, password='***')"


def auth_dir(data: Path) -> Path:
    return data / AUTH_DIR


def credentials_path(data: Path, role: str) -> Path:
    return auth_dir(data) / f"{role}.json"


def user_name(prefix: str, role: str) -> str:
    return f"{prefix}-{role}"


def read_credentials(path: str | os.PathLike[str]) -> NatsCredentials:
    """Read a credentials file (no links followed); ConfigError saying what to do otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ConfigError("TASKBUS_NATS_CREDENTIALS", f"cannot read NATS credentials {path}: {exc.strerror}") from None
    try:
        raw = os.read(fd, 65536)
    finally:
        os.close(fd)
    try:
        doc = json.loads(raw)
        return NatsCredentials(user=str(doc["user"]), password=str(doc["password"]))
    except (ValueError, KeyError, TypeError):
        raise ConfigError("TASKBUS_NATS_CREDENTIALS", f"{path} is not a NATS credentials file (JSON with user and password)") from None


def ensure_credentials(data: Path, prefix: str) -> dict[str, NatsCredentials]:
    """Every role's credentials in ``<data>/nats-auth``: read, or created on first use."""
    folder = owned_private_dir(auth_dir(data))
    out = {}
    for role in ROLES:
        path = folder / f"{role}.json"
        fresh = {"user": user_name(prefix, role), "password": secrets.token_urlsafe(32)}
        write_private(path, json.dumps(fresh) + "\n")
        out[role] = read_credentials(path)
    return out


def hash_password(password: str, *, rounds: int = 10) -> str:
    """A bcrypt hash nats-server accepts in ``password:`` (it checks it per connection)."""
    return bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=rounds, prefix=b"2a")).decode()


def role_permissions(prefix: str) -> dict[str, tuple[list[str], list[str]]]:
    """(publish, subscribe) subjects per role."""
    s = Subjects(prefix)
    p = s.prefix
    jobs, events, audit = s.jobs_stream, s.events_stream, s.audit_stream
    art, cache = s.artifacts_bucket, s.cache_bucket
    obj = f"OBJ_{art}"
    control_plane = control_plane_buckets(prefix)
    kv_control = [f"$KV.{b}.>" for b in control_plane]
    return {
        "server": (
            [
                f"{p}.jobs.>",
                f"{p}.control.>",
                f"{p}.audit.>",
                f"{p}.events.>",
                "$JS.API.>",
                f"$O.{art}.>",
                f"$KV.{cache}.>",
                f"$KV.{p}-submits.>",
                *kv_control,
                "$JS.ACK.>",
                _FLOW,
                _INBOX,
            ],
            [f"{p}.submit.>", f"{p}.events.>", f"{p}.runners.>", f"$O.{art}.>", f"$KV.{cache}.>", _INBOX],
        ),
        "runner": (
            [
                f"{p}.events.>",
                f"{p}.runners.>",
                f"{p}.audit.malformed_job",
                f"{p}.audit.replayed_job",
                "$JS.API.>",
                f"$JS.ACK.{jobs}.>",
                f"$O.{art}.>",
                f"$KV.{s.claims_bucket}.>",
                _FLOW,
                _INBOX,
            ],
            [f"{p}.control.>", f"{p}.runners.>", f"$O.{art}.>", _INBOX],
        ),
        "audit": (
            [f"{p}.auditlog.head", f"{p}.alerts.>", "$JS.API.>", f"$JS.ACK.{events}.>", f"$JS.ACK.{audit}.>", _FLOW, _INBOX],
            [f"{p}.events.>", f"{p}.audit.>", _INBOX],
        ),
        "cli": (
            [
                f"{p}.submit.>",
                f"{p}.audit.>",
                "$JS.API.INFO",
                "$JS.API.STREAM.INFO.>",
                f"$JS.API.STREAM.MSG.GET.{events}",
                f"$JS.API.DIRECT.GET.{events}.>",
                f"$JS.API.CONSUMER.CREATE.{events}.>",
                f"$JS.API.CONSUMER.CREATE.{events}",
                f"$JS.API.CONSUMER.DELETE.{events}.>",
                f"$JS.API.CONSUMER.INFO.{events}.>",
                f"$JS.API.CONSUMER.MSG.NEXT.{events}.>",
                f"$JS.ACK.{events}.>",
                f"$JS.API.STREAM.INFO.{obj}",
                f"$JS.API.STREAM.MSG.GET.{obj}",
                f"$JS.API.DIRECT.GET.{obj}.>",
                f"$JS.API.CONSUMER.CREATE.{obj}.>",
                f"$JS.API.CONSUMER.CREATE.{obj}",
                f"$JS.API.CONSUMER.DELETE.{obj}.>",
                *_cli_control_plane(control_plane),
                _FLOW,
                _INBOX,
            ],
            [f"{p}.events.>", f"{p}.runners.>", f"{p}.auditlog.head", f"{p}.alerts.>", _INBOX],
        ),
    }


def _control_plane_api(buckets: tuple[str, ...]) -> list[str]:
    """The JetStream API subjects that read or change the KV buckets ``buckets``."""
    out: list[str] = []
    for bucket in buckets:
        stream = f"KV_{bucket}"
        out += [
            f"$KV.{bucket}.>",
            f"$JS.API.*.*.{stream}",
            f"$JS.API.*.*.{stream}.>",
            f"$JS.API.*.*.*.{stream}",
            f"$JS.API.*.*.*.{stream}.>",
        ]
    return out


def control_plane_buckets(prefix: str) -> tuple[str, ...]:
    s = Subjects(prefix)
    return (s.control_bucket, s.ledger_bucket, s.tasks_bucket)


def role_denials(prefix: str) -> dict[str, list[str]]:
    """Publish subjects denied per role despite a wider grant: the control plane for the
    runner and the audit writer."""
    denied = _control_plane_api(control_plane_buckets(prefix))
    return {"runner": denied, "audit": denied}


def _cli_control_plane(buckets: tuple[str, ...]) -> list[str]:
    """What the operator's commands need on the control-plane buckets: create them when
    missing, read entries (direct get), watch them (ordered consumers), read a window of
    them (pull consumers), write them."""
    out: list[str] = []
    for bucket in buckets:
        stream = f"KV_{bucket}"
        out += [
            f"$KV.{bucket}.>",
            f"$JS.API.STREAM.INFO.{stream}",
            f"$JS.API.STREAM.CREATE.{stream}",
            f"$JS.API.STREAM.MSG.GET.{stream}",
            f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.DIRECT.GET.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}",
            f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DELETE.{stream}.>",
            f"$JS.API.CONSUMER.INFO.{stream}.>",
            f"$JS.API.CONSUMER.MSG.NEXT.{stream}.>",  # listings read the tasks index backwards with pull consumers
        ]
    return out


def authorization_block(prefix: str, passwords: dict[str, str]) -> str:
    """The nats-server ``authorization`` section: one user per role in ``passwords``
    (role -> bcrypt hash, or a placeholder in the example)."""
    perms = role_permissions(prefix)
    denials = role_denials(prefix)

    def q(subjects: list[str]) -> str:
        return "[" + ", ".join(json.dumps(x) for x in subjects) + "]"

    users = []
    for role, password in passwords.items():
        pub, sub = perms[role]
        publish = f"{{ allow: {q(pub)}, deny: {q(denials[role])} }}" if role in denials else q(pub)
        users.append(
            f"    {{ user: {json.dumps(user_name(prefix, role))}, password: {json.dumps(password)}, permissions: {{\n"
            f"        publish: {publish}\n        subscribe: {q(sub)}\n    }} }}"
        )
    return "authorization {\n  users = [\n" + "\n".join(users) + "\n  ]\n}\n"


def server_authorization(data: Path, prefix: str) -> str:
    """The block for an embedded server of ``data``: every role, bcrypt hashes only."""
    creds = ensure_credentials(data, prefix)
    return authorization_block(prefix, {role: hash_password(c.password) for role, c in creds.items()})
