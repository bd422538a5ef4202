"""A NATS user without subject limits next to ``taskbus up``'s per-role users, for test
harnesses: the cluster tests connect as it on a fresh prefix per test, the chaos
hostile-input scenario plays the worst client with it (a leaked server or runner user)."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

from bus._natsauth import hash_password, server_authorization
from bus._private import write_private


def with_unlimited_user(data: Path, prefix: str, *, user: str, credentials: str) -> str:
    """The ``authorization`` block of ``taskbus up``'s users for ``prefix`` plus ``user`` with a
    fresh password and no permission limits; its credentials are written (0600) to
    ``data/credentials`` in the form ``TASKBUS_NATS_CREDENTIALS`` reads."""
    password = uuid.uuid4().hex
    (data / credentials).unlink(missing_ok=True)
    write_private(data / credentials, json.dumps({"user": user, "password": password}))
    block = server_authorization(data, prefix)
    assert block.endswith("\n  ]\n}\n"), "the users list closes the block"
    unlimited = f"    {{ user: {json.dumps(user)}, password: {json.dumps(hash_password(password))} }}\n  ]\n}}\n"
    return block[: -len("  ]\n}\n")] + unlimited
