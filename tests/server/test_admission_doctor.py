"""`taskbus doctor` compares the NATS server's max_payload with TASKBUS_MAX_MESSAGE_BYTES (#16.8)."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from cli import app


def _payload_check(tmp_path: Path, nats_url: str, max_bytes: int) -> dict:
    result = CliRunner().invoke(
        app,
        ["doctor", "--json"],
        env={
            "TASKBUS_DATA_DIR": str(tmp_path),
            "TASKBUS_NATS_URL": nats_url,
            "TASKBUS_MAX_MESSAGE_BYTES": str(max_bytes),
        },
    )
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["nats"]["ok"] is True
    return checks["nats_max_payload"]


def test_doctor_flags_a_nats_max_payload_below_the_message_limit(tmp_path: Path, nats_url: str, nats_server) -> None:
    too_big = nats_server.max_payload + 1
    check = _payload_check(tmp_path, nats_url, too_big)
    assert check["ok"] is False and str(nats_server.max_payload) in check["detail"]
    assert f"max_payload: {too_big}" in check["fix"] and "TASKBUS_MAX_MESSAGE_BYTES" in check["fix"]
    assert _payload_check(tmp_path, nats_url, nats_server.max_payload)["ok"] is True
