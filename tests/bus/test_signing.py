"""Job signatures: any change to the signed parts breaks verification."""

from __future__ import annotations

import msgspec
import pytest

import bus
from bus import SignatureError

SECRET = "s3cret-for-tests"


def _job(**policy_changes: object) -> bus.Job:
    policy = bus.Policy(
        task_id="t_1",
        kind="task",
        key_id="tb_abc",
        profile="developer",
        model="claude-sonnet-4-6",
        models=["claude-sonnet-4-6"],
        tools=["Bash", "Read"],
        max_cost_usd=1.0,
        **policy_changes,
    )
    request = bus.TaskRequest(description="write hello.py")
    return bus.Job(task_id="t_1", policy=policy, request=request, signature=bus.sign_job("t_1", policy, request, SECRET))


def test_a_signed_job_verifies() -> None:
    bus.verify_job(_job(), SECRET)


def test_a_different_secret_fails() -> None:
    with pytest.raises(SignatureError, match="does not verify"):
        bus.verify_job(_job(), "another-secret")


def test_an_unsigned_job_is_refused() -> None:
    job = msgspec.structs.replace(_job(), signature="")
    with pytest.raises(SignatureError, match="not signed"):
        bus.verify_job(job, SECRET)


@pytest.mark.parametrize(
    "change",
    [
        {"tools": ["Bash", "Read", "Write"]},
        {"max_cost_usd": 100.0},
        {"timeout_s": 99999},
        {"network": "none"},
        {"models": ["claude-opus-4-8"]},
        {"profile": "admin"},
    ],
    ids=lambda c: next(iter(c)),
)
def test_changing_any_policy_field_breaks_verification(change: dict) -> None:
    job = _job()
    forged = msgspec.structs.replace(job, policy=msgspec.structs.replace(job.policy, **change))
    with pytest.raises(SignatureError):
        bus.verify_job(forged, SECRET)


def test_changing_the_request_breaks_verification() -> None:
    job = _job()
    forged = msgspec.structs.replace(job, request=bus.TaskRequest(description="rm -rf /"))
    with pytest.raises(SignatureError):
        bus.verify_job(forged, SECRET)


def test_a_policy_from_another_task_is_refused() -> None:
    job = _job()
    with pytest.raises(SignatureError, match="another task"):
        bus.verify_job(msgspec.structs.replace(job, task_id="t_2"), SECRET)
