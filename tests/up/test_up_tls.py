"""`taskbus up` against an operator's NATS that requires mutual TLS: every process of the
stack (up itself, the server, the runner, the audit writer, the demo client) connects with
the TLS settings it inherits, or the start stops with one line naming the setting."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from tls_kit import Pki, make_pki, tls_block
from up_kit import ROOT, TASKBUS

from bus import EmbeddedNats


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    return make_pki(tmp_path / "pki")


@pytest.fixture
def mtls_nats(tmp_path: Path, pki: Pki) -> Iterator[EmbeddedNats]:
    """A nats-server whose clients must present a certificate of the CA (verify: true)."""
    server = EmbeddedNats(tmp_path / "nats", authorization=tls_block(pki, verify=True))  # the block is appended verbatim
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_up_check_runs_the_whole_stack_over_mutual_tls(up_env: dict[str, str], pki: Pki, mtls_nats: EmbeddedNats) -> None:
    tls = {
        "TASKBUS_NATS_URL": f"tls://127.0.0.1:{mtls_nats.port}",
        "TASKBUS_NATS_TLS_CA": str(pki.ca),
        "TASKBUS_NATS_TLS_CERT": str(pki.client_cert),
        "TASKBUS_NATS_TLS_KEY": str(pki.client_key),
    }
    result = subprocess.run([TASKBUS, "up", "--check"], env={**up_env, **tls}, cwd=ROOT, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "check passed" in output and "succeeded" in output

    without_cert = {k: v for k, v in tls.items() if k not in ("TASKBUS_NATS_TLS_CERT", "TASKBUS_NATS_TLS_KEY")}
    refused = subprocess.run(
        [TASKBUS, "up", "--check"], env={**up_env, **without_cert}, cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert refused.returncode == 1
    assert "TASKBUS_NATS_TLS_CERT" in refused.stderr and "Traceback" not in refused.stderr
