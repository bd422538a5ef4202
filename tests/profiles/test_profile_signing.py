"""Signed policies: any change to the policy or the request breaks verification."""

from __future__ import annotations

from datetime import timedelta

import msgspec
import pytest

from bus import CatalogRef, InputFile, Policy, SignatureError, TaskRequest, utcnow
from profiles import sign_policy, verify

SECRET = "shared-job-secret"
REQUEST = TaskRequest(description="fix the bug", allow_tools=["Read"], project="/srv/p", timeout_s=60)
POLICY = Policy(
    task_id="t_1",
    kind="task",
    key_id="tb_AbCd1234",
    profile="developer",
    model="claude-haiku-4-5",
    models=["claude-haiku-4-5"],
    tools=["Read"],
    project_root="/srv/p",
    fs_access="readonly",
)

# one changed value per field; the coverage assertion below fails when a field is added
POLICY_CHANGES = {
    "task_id": "t_2",
    "kind": "complete",
    "key_id": "tb_ZzZz9999",
    "profile": "admin",
    "model": "claude-opus-4-8",
    "models": ["claude-opus-4-8"],
    "tools": ["Read", "Bash"],
    "agents": ["Explore"],
    "skills": ["pdf"],
    "cpus": 2.0,
    "memory_mb": 2048,
    "pids": 1000,
    "disk_mb": 9999,
    "timeout_s": 6000,
    "max_cost_usd": 99.0,
    "max_turns": 500,
    "network": "none",
    "fs_access": "readwrite",
    "project_root": "/",
    "issued_at": POLICY.issued_at + timedelta(seconds=1),
    "routing_reason": "forged",
    "nonce": "0" * 32,
    "expires_at": POLICY.issued_at + timedelta(days=365),
    "catalog": [CatalogRef(kind="agent", name="evil", sha256="0" * 64)],
}
REQUEST_CHANGES = {
    "description": "rm -rf /",
    "allow_tools": ["Bash"],
    "allow_agents": ["x"],
    "allow_skills": ["y"],
    "files": [InputFile(path="a.txt", content="x")],
    "project": "/",
    "timeout_s": 61,
    "max_cost_usd": 5.0,
    "model": "claude-opus-4-8",
    "max_turns": 3,
    "effort": "high",
}


def test_every_field_of_policy_and_request_is_covered_by_the_tamper_tests():
    assert set(POLICY_CHANGES) == set(Policy.__struct_fields__)
    assert set(REQUEST_CHANGES) == set(TaskRequest.__struct_fields__)


def test_an_untouched_job_verifies_and_survives_the_wire():
    job = sign_policy(POLICY, REQUEST, SECRET)
    verify(job, SECRET)
    verify(msgspec.json.decode(msgspec.json.encode(job), type=type(job)), SECRET)


@pytest.mark.parametrize("field", sorted(POLICY_CHANGES))
def test_changing_any_policy_field_breaks_verification(field):
    job = sign_policy(POLICY, REQUEST, SECRET)
    forged = msgspec.structs.replace(job, policy=msgspec.structs.replace(POLICY, **{field: POLICY_CHANGES[field]}))
    with pytest.raises(SignatureError):
        verify(forged, SECRET)


@pytest.mark.parametrize("field", sorted(REQUEST_CHANGES))
def test_changing_any_request_field_breaks_verification(field):
    job = sign_policy(POLICY, REQUEST, SECRET)
    forged = msgspec.structs.replace(job, request=msgspec.structs.replace(REQUEST, **{field: REQUEST_CHANGES[field]}))
    with pytest.raises(SignatureError):
        verify(forged, SECRET)


def test_a_different_secret_or_a_missing_signature_fails():
    job = sign_policy(POLICY, REQUEST, SECRET)
    with pytest.raises(SignatureError, match="does not verify"):
        verify(job, SECRET + "x")
    with pytest.raises(SignatureError, match="not signed"):
        verify(msgspec.structs.replace(job, signature=""), SECRET)
    assert sign_policy(POLICY, REQUEST, SECRET, submitted_at=utcnow()).signature == job.signature
