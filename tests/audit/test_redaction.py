"""Anything shaped like a credential is stored redacted, whatever the publisher forgot."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import msgspec
import pytest
from audit_helpers import RunningWriter, invoke, wait_rows

from audit._rows import needs_redaction
from bus import AuditNotice, Bus, Message, Settings, ToolCall, new_task_id, redact

SECRETS = [
    "sk-ant-api03-Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf0",
    "tb_live_Q1w2E3r4T5y6U7i8O9p0Aa",
    "sk-proj0123456789abcdefghijKLMN",
    "AKIAIOSFODNN7EXAMPLE",
    "ghp_0123456789abcdefghijABCDEFGHIJ0123",
]


def file_bytes(db: Path) -> bytes:
    return b"".join(p.read_bytes() for p in db.parent.glob(db.name + "*") if p.is_file())


async def test_an_event_carrying_an_api_key_is_stored_redacted(bus: Bus, writer: RunningWriter, db: Path, settings: Settings):
    task_id = new_task_id()
    now = datetime.now(UTC)
    await bus.publish(
        bus.subjects.events(task_id),
        Message(
            task_id=task_id,
            seq=1,
            ts=now,
            text=f"the key is {SECRETS[0]} and {SECRETS[1]}",
        ),
    )
    await bus.publish(
        bus.subjects.events(task_id),
        ToolCall(
            task_id=task_id,
            seq=2,
            ts=now,
            id="c1",
            name="Bash",
            input={
                "command": f"curl -H 'Authorization: Bearer {SECRETS[2]}' https://example.com",
                "env": {"AWS": SECRETS[3], "password": "hunter2hunter2"},
                "tokens": [SECRETS[4]],
            },
        ),
    )
    await bus.publish(
        bus.subjects.audit("auth_failure"),
        AuditNotice(
            kind="auth_failure",
            actor="tb_unknown",
            detail={"presented": SECRETS[1]},
        ),
    )
    # a publisher hiding the marker behind a JSON escape (\u0073 is "s")
    escaped = (
        b'{"type":"log","task_id":"' + task_id.encode() + b'","seq":3,"ts":"2026-01-01T00:00:00Z",'
        b'"line":"\\u0073k-ant-api03-HiddenBehindAnEscape0123"}'
    )
    await bus.publish(bus.subjects.events(task_id), escaped)
    await wait_rows(db, 4)

    stored = file_bytes(db)
    for secret in [*SECRETS, "hunter2hunter2", "HiddenBehindAnEscape0123"]:
        assert secret.encode() not in stored, f"{secret} reached the audit database"
    rows = json.loads(invoke(settings, "audit", "search", "--json", "--task", task_id).stdout)
    assert rows[0]["event"]["text"] == "the key is [REDACTED] and [REDACTED]"
    assert rows[1]["event"]["input"]["env"]["AWS"] == "[REDACTED]"
    assert rows[1]["event"]["input"]["env"]["password"] == "[REDACTED]"
    assert rows[2]["event"]["line"] == "[REDACTED]"
    # the full-text index holds the redacted text only
    assert json.loads(invoke(settings, "audit", "search", "--json", "--text", "Zx9Yw8Vu7Ts6Rq5Po4Nm3Lk2Jh1Gf0").stdout) == []
    assert len(json.loads(invoke(settings, "audit", "search", "--json", "--text", "REDACTED").stdout)) >= 3


@pytest.mark.parametrize(
    "secret",
    [
        *SECRETS,
        "Bearer abcdefghijklmnop0123",
        "api_key=abcdefgh12345678",
        "Authorization: xyzxyzxyz123",
        "password: 'longenough99'",
        'secret\t=\n"abcdefgh1234"',
        "token\u00a0: abcdefgh123",  # odd spacing
        "\u017fecret=abcdefgh123",
        "to\u212aen: abcdefgh123",
        "AP\u0130_KEY=abcdefgh123",  # case folding
    ],
)
def test_every_credential_shape_bus_redacts_is_caught_by_the_fast_path_check(secret: str):
    assert redact(secret) != secret  # bus.redact knows the shape
    assert needs_redaction(msgspec.json.encode({"text": f"x {secret} y"}))  # so the writer looks


def test_a_payload_without_credential_markers_skips_redaction():
    assert not needs_redaction(b'{"type":"message","text":"hello world","seq":1}')
