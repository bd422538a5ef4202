"""Dispatch resolves a requested project path with realpath (both the path and the
profile's roots) before it signs the job; the runner checks the signed path again
before mounting it. Real nats-server, real profiles Store, real symlinks."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import msgspec
import pytest
from nats.js.api import DeliverPolicy

from bus import (
    Accepted,
    Finished,
    Job,
    Policy,
    PolicyDenied,
    Security,
    Settings,
    TaskRequest,
    decode_event,
    decode_job,
    sign_job,
    utcnow,
)
from profiles import Profile
from sandbox import Runner, ScriptedModelServer
from sandbox._sandboxes import spec_from_policy


async def _denied_notices(stack, count: int) -> list:
    async with asyncio.timeout(10):
        while len(found := [n for n in stack.notices if n.kind == "denied"]) < count:
            await asyncio.sleep(0.02)
    return found


@pytest.fixture
def roots(tmp_path: Path) -> tuple[Path, Path]:
    """An allowed root holding a real project, a link to /etc and a link to a sibling project."""
    root = tmp_path / "projects"
    (root / "app").mkdir(parents=True)
    (root / "etc-link").symlink_to("/etc")
    outside = tmp_path / "secret-project"
    outside.mkdir()
    (root / "sneaky").symlink_to(outside)
    linked_root = tmp_path / "projects-link"  # a root that is itself a link
    linked_root.symlink_to(root)
    return root, linked_root


async def test_a_symlink_out_of_the_allowed_root_is_refused_at_dispatch_and_audited(
    settings: Settings, make_stack, roots: tuple[Path, Path]
) -> None:
    root, _ = roots
    async with make_stack(settings) as stack:
        await stack.store.create_profile(
            Profile(
                name="proj",
                models=["claude-sonnet-4-6"],
                tools=["Bash"],
                fs_access="readonly",
                project_roots=[str(root)],
            )
        )
        caller = await stack.dispatcher.authenticate(await stack.key("proj"), via="test")
        for link, target in (("etc-link", "/etc"), ("sneaky", str(root.parent / "secret-project"))):
            with pytest.raises(PolicyDenied) as refused:
                await stack.dispatcher.submit(caller, TaskRequest(description="x", project=str(root / link / ".")))
            assert f"resolves to {target!r}" in refused.value.message and str(root) in refused.value.message
        notices = await _denied_notices(stack, 2)
        assert all("resolves to" in n.detail["message"] for n in notices)
        jobs = await stack.bus.js.stream_info(stack.bus.subjects.jobs_stream)
        assert jobs.state.messages == 0


async def test_a_project_under_a_root_that_is_itself_a_link_is_signed_by_its_real_path(
    settings: Settings, make_stack, roots: tuple[Path, Path]
) -> None:
    root, linked_root = roots
    async with make_stack(settings) as stack:
        await stack.store.create_profile(
            Profile(
                name="proj",
                models=["claude-sonnet-4-6"],
                fs_access="readonly",
                project_roots=[str(linked_root)],
            )
        )
        sub = await stack.bus.js.subscribe(stack.bus.subjects.jobs("task"), stream=stack.bus.subjects.jobs_stream)
        caller = await stack.dispatcher.authenticate(await stack.key("proj"), via="test")
        submission = await stack.dispatcher.submit(caller, TaskRequest(description="x", project=str(linked_root / "app")))
        msg = await sub.next_msg(timeout=10)
        job = decode_job(msg.data)
        await sub.unsubscribe()
    assert job.task_id == submission.task_id
    assert job.policy.project_root == os.path.realpath(root / "app")


def _policy(project_root: str) -> Policy:
    return Policy(
        task_id="t-0123456789ab",
        kind="task",
        key_id="tb_x",
        profile="p",
        model="m",
        models=["m"],
        fs_access="readonly",
        project_root=project_root,
    )


def test_the_runner_refuses_a_signed_project_root_that_now_resolves_elsewhere(tmp_path: Path) -> None:
    project = tmp_path / "projects" / "app"
    project.mkdir(parents=True)
    spec = spec_from_policy(_policy(str(project)), runner_id="r", workspace=str(tmp_path / "w"))
    assert spec.project == str(project)
    # after dispatch signed the path, the project folder is swapped for a link to /etc
    project.rmdir()
    project.symlink_to("/etc")
    with pytest.raises(PolicyDenied, match="now resolves to '/etc'"):
        spec_from_policy(_policy(str(project)), runner_id="r", workspace=str(tmp_path / "w"))
    # and a link in a parent folder is caught the same way
    with pytest.raises(PolicyDenied, match="now resolves to '/etc/ssl'"):
        spec_from_policy(_policy(str(project / "ssl")), runner_id="r", workspace=str(tmp_path / "w"))


async def test_a_runner_refuses_a_project_root_swapped_for_a_link_after_signing_and_reports_it(
    e2e_settings: Settings, tmp_path: Path, bus
) -> None:
    """The whole runner: a signed job whose project folder became a link to /etc."""
    project = tmp_path / "projects" / "app"
    project.parent.mkdir()
    project.symlink_to("/etc")  # swapped in after dispatch resolved and signed the path
    task_id = "t-" + os.urandom(6).hex()
    request = TaskRequest(description="[script:hello] hi", project=str(project))
    policy = Policy(
        task_id=task_id,
        kind="task",
        key_id="tb_x",
        profile="p",
        model="claude-sonnet-4-6",
        models=["claude-sonnet-4-6"],
        tools=["Bash"],
        max_cost_usd=1.0,
        timeout_s=60,
        fs_access="readonly",
        project_root=str(project),
    )
    async with ScriptedModelServer(log_path=tmp_path / "model.jsonl") as model:
        settings = msgspec.structs.replace(e2e_settings, upstream_url=model.url)
        async with Runner(settings, backend="bwrap", slots=1, runner_id="r-project-root"):
            await bus.publish(
                bus.subjects.events(task_id),
                Accepted(task_id=task_id, seq=1, ts=utcnow(), kind="task", key_id="tb_x", profile="p", model="claude-sonnet-4-6"),
                msg_id=f"{task_id}-1",
            )
            job = Job(task_id=task_id, policy=policy, request=request, signature=sign_job(task_id, policy, request, settings.job_secret))
            await bus.publish(bus.subjects.jobs("task"), job, msg_id=task_id)
            sub = await bus.js.subscribe(bus.subjects.events(task_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
            events: list = []
            async with asyncio.timeout(120):
                while not events or not isinstance(events[-1], Finished):
                    events.append(decode_event((await sub.next_msg(timeout=120)).data))
            await sub.unsubscribe()
        assert model.requests() == []  # nothing ran: the model was never called
    finished = events[-1]
    assert finished.status == "failed" and finished.reason == "permission_denied", finished
    assert "now resolves to '/etc'" in finished.result
    notices = [e for e in events if isinstance(e, Security) and e.kind == "project_root_changed"]
    assert len(notices) == 1 and notices[0].severity == "critical" and "/etc" in notices[0].detail
