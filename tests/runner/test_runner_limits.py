"""Cost cap, wall clock, cancel, malformed jobs, completions, and the Docker backend."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from runner_kit import assert_gapless, follow, make_job, scripted_model, submit

import bus as bus_module
from bus import Finished, Message, ModelCall, Security, Settings, Started
from sandbox import Runner


async def _running(b: bus_module.Bus, task_id: str, *, timeout: float = 60) -> None:
    """Wait until the task's first tool call happened (the agent is really running)."""
    from nats.js.api import DeliverPolicy

    sub = await b.js.subscribe(b.subjects.events(task_id), ordered_consumer=True, deliver_policy=DeliverPolicy.ALL)
    try:
        async with asyncio.timeout(timeout):
            while True:
                event = bus_module.decode_event((await sub.next_msg(timeout=timeout)).data)
                if isinstance(event, bus_module.ToolCall):
                    return
    finally:
        await sub.unsubscribe()


@pytest.mark.usefixtures("require_bwrap", "require_claude")
async def test_an_expensive_task_ends_budget_exceeded_within_its_cap(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    cap = 2.0  # one expensive Opus call is about 1.2 USD: the second cannot fit
    async with scripted_model(runner_settings, tmp_path) as (settings, _model):
        async with Runner(settings, backend="bwrap", slots=1, runner_id="r-cost"):
            job = make_job(
                settings, bus_module.TaskRequest(description="[script:expensive] think hard"), model="claude-opus-4-8", max_cost_usd=cap
            )
            await submit(bus, job)
            events = await follow(bus, job.task_id)
    assert_gapless(events)
    finished = events[-1]
    assert finished.status == "budget_exceeded", finished
    metered = sum(e.cost_usd for e in events if isinstance(e, ModelCall))
    assert 0 < metered <= cap and abs(finished.cost_usd - metered) < 1e-9


@pytest.mark.usefixtures("require_bwrap", "require_claude")
async def test_a_runaway_task_times_out_and_a_cancel_lands_within_two_seconds(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    async with scripted_model(runner_settings, tmp_path) as (settings, _model):
        async with Runner(settings, backend="bwrap", slots=2, runner_id="r-runaway") as runner:
            slow = make_job(settings, bus_module.TaskRequest(description="[script:runaway] go"), timeout_s=8, max_turns=1000)
            victim = make_job(settings, bus_module.TaskRequest(description="[script:runaway] again"), timeout_s=300, max_turns=1000)
            await submit(bus, slow)
            await submit(bus, victim)
            await _running(bus, victim.task_id)
            sent = time.monotonic()
            await bus.nc.publish(bus.subjects.control(victim.task_id), bus_module.encode(bus_module.Cancel(task_id=victim.task_id)))
            cancelled = await follow(bus, victim.task_id, timeout=30)
            cancel_latency = time.monotonic() - sent
            timed_out = await follow(bus, slow.task_id, timeout=120)
            sandboxes = await runner.backend.list()
    assert cancelled[-1].status == "cancelled" and cancelled[-1].reason == "cancelled_by_caller"
    assert cancel_latency < 2.0, f"cancel took {cancel_latency:.2f}s"
    assert timed_out[-1].status == "timeout"
    assert_gapless(cancelled)
    assert_gapless(timed_out)
    assert [s for s in sandboxes if s.task_id in (slow.task_id, victim.task_id)] == []
    left = [p.name for p in (Path(settings.data_dir) / "runs" / "r-runaway").iterdir() if p.name not in ("shared", "socket_root")]
    assert left == [], "task folders (workspaces) are removed"


async def test_a_malformed_job_is_rejected_with_a_reason_and_the_next_job_runs(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    async with scripted_model(runner_settings, tmp_path) as (settings, _model):
        async with Runner(settings, backend="bwrap", slots=1, runner_id="r-malformed", kinds=("complete",)):
            bad_id = bus_module.new_task_id()
            await bus.publish(bus.subjects.jobs("complete"), b'{"task_id": 42, "policy": "all of it"}', msg_id=bad_id)
            await bus.publish(bus.subjects.jobs("complete"), b"\xff\xfe not json", msg_id="not a task id!")
            good = make_job(settings, bus_module.CompleteRequest(prompt="hello there"))
            await submit(bus, good)
            bad_events = await follow(bus, bad_id)
            good_events = await follow(bus, good.task_id)
            notices = await bus.js.subscribe(bus.subjects.audit("malformed_job"), ordered_consumer=True)
            notice = bus_module.decode_notice((await notices.next_msg(timeout=10)).data)
            await notices.unsubscribe()
    assert bad_events[-1].status == "failed" and bad_events[-1].reason == "malformed_job"
    assert any(isinstance(e, Security) and e.kind == "malformed_job" and "task_id" in e.detail for e in bad_events)
    assert notice.kind == "malformed_job" and "JSON" in notice.detail["error"]
    assert good_events[-1].status == "succeeded"


async def test_a_completion_streams_deltas_and_reports_metered_usage(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    async with scripted_model(runner_settings, tmp_path) as (settings, _model):
        async with Runner(settings, slots=1, runner_id="r-complete", kinds=("complete",)):
            job = make_job(settings, bus_module.CompleteRequest(prompt="Say hello to the bus", max_tokens=200))
            await submit(bus, job)
            events = await follow(bus, job.task_id)
    assert_gapless(events)
    finished = events[-1]
    assert finished.status == "succeeded"
    deltas = [e.text for e in events if isinstance(e, Message) and e.delta]
    assert deltas and "".join(deltas) == finished.result
    assert "Say hello to the bus" in finished.result  # the default reply echoes the prompt
    (call,) = [e for e in events if isinstance(e, ModelCall)]
    assert call.usage.output_tokens > 0 and finished.usage == call.usage
    price = settings.prices["claude-sonnet-4-6"]
    expected = (call.usage.input_tokens * price.input + call.usage.output_tokens * price.output) / 1e6
    assert finished.cost_usd == pytest.approx(expected)


async def test_a_job_already_finished_is_acked_without_running_again(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    async with scripted_model(runner_settings, tmp_path) as (settings, model):
        job = make_job(settings, bus_module.CompleteRequest(prompt="once"))
        await submit(bus, job)
        async with Runner(settings, slots=1, runner_id="r-once", kinds=("complete",)):
            first = await follow(bus, job.task_id)
        calls = len(model.requests())
        # the same job again with a new message id (as if the ack had been lost)
        await bus.publish(bus.subjects.jobs("complete"), job, msg_id=job.task_id + "-again")
        async with Runner(settings, slots=1, runner_id="r-once", kinds=("complete",)):
            async with asyncio.timeout(20):
                while (await bus.js.stream_info(bus.subjects.jobs_stream)).state.messages:
                    await asyncio.sleep(0.05)
        assert len(model.requests()) == calls
    again = await follow(bus, job.task_id)
    assert again == first


@pytest.mark.usefixtures("require_docker", "require_claude")
async def test_write_a_file_task_runs_in_docker_too(runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus) -> None:
    async with scripted_model(runner_settings, tmp_path) as (settings, _model):
        async with Runner(settings, backend="docker", slots=1, runner_id="r-docker") as runner:
            job = make_job(settings, bus_module.TaskRequest(description="[script:write-a-file] docker please"))
            await submit(bus, job)
            events = await follow(bus, job.task_id, timeout=180)
            left = [s for s in await runner.backend.list() if s.task_id == job.task_id]
    assert_gapless(events)
    assert events[-1].status == "succeeded", events[-1]
    assert any(isinstance(e, Started) and e.backend == "docker" for e in events)
    assert any(isinstance(e, bus_module.Artifact) and e.path == "hello.txt" for e in events)
    assert left == []


@pytest.mark.usefixtures("require_bwrap", "require_claude")
async def test_a_completion_through_the_claude_cli_provider_streams_and_is_metered(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    import msgspec

    async with scripted_model(runner_settings, tmp_path) as (base, model):
        settings = msgspec.structs.replace(base, complete_provider="claude-cli")
        async with Runner(settings, backend="bwrap", slots=1, runner_id="r-cli", kinds=("complete",)):
            job = make_job(settings, bus_module.CompleteRequest(prompt="Echo me through the CLI", system="Be brief."))
            await submit(bus, job)
            events = await follow(bus, job.task_id)
        offered = [r["tools"] for r in model.requests() if r.get("path", "").startswith("/v1/messages") and "tools" in r]
    assert_gapless(events)
    finished = events[-1]
    assert finished.status == "succeeded", finished
    assert "Echo me through the CLI" in finished.result
    deltas = "".join(e.text for e in events if isinstance(e, Message) and e.delta)
    assert deltas and "Echo me through the CLI" in deltas
    calls = [e for e in events if isinstance(e, ModelCall)]
    assert calls and finished.cost_usd == pytest.approx(sum(c.cost_usd for c in calls))
    assert all(tools == [] for tools in offered), "a completion offers the model no tools"


async def test_a_task_cancelled_by_the_server_before_start_is_not_run(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    """The server may finish a queued task itself (seq 2); a runner must then drop the job."""
    async with scripted_model(runner_settings, tmp_path) as (settings, model):
        job = make_job(settings, bus_module.CompleteRequest(prompt="never to be answered"))
        await submit(bus, job)
        await bus.publish(
            bus.subjects.events(job.task_id),
            bus_module.Finished(task_id=job.task_id, seq=2, ts=bus_module.utcnow(), status="cancelled", reason="cancelled_before_start"),
            msg_id=f"{job.task_id}-2",
        )
        async with Runner(settings, slots=1, runner_id="r-pre", kinds=("complete",)):
            async with asyncio.timeout(20):
                while (await bus.js.stream_info(bus.subjects.jobs_stream)).state.messages:
                    await asyncio.sleep(0.05)
        assert model.requests() == []
    events = await follow(bus, job.task_id)
    assert [type(e).__name__ for e in events] == ["Accepted", "Finished"]
    assert events[-1].reason == "cancelled_before_start"


async def test_a_second_writer_of_the_same_seq_preempts_the_runner(runner_settings: Settings, bus: bus_module.Bus) -> None:
    """The race the server's early cancel can lose: both write seq 2 with the same msg id."""
    from sandbox._runner._events import TaskEvents, TaskPreempted

    task_id = bus_module.new_task_id()
    events = TaskEvents(bus, task_id, next_seq=2)
    await bus.publish(
        bus.subjects.events(task_id),
        bus_module.Finished(task_id=task_id, seq=2, ts=bus_module.utcnow(), status="cancelled", reason="cancelled_before_start"),
        msg_id=f"{task_id}-2",
    )
    with pytest.raises(TaskPreempted):
        await events.emit(bus_module.Started, runner_id="r", backend="bwrap")
    assert isinstance(events.finished, Finished) and events.finished.status == "cancelled"
    # a retry of our own publish is not a conflict
    own = TaskEvents(bus, "t_own", next_seq=1)
    log = bus_module.Log(task_id="t_own", seq=1, ts=bus_module.utcnow(), line="x")
    await bus.publish_unique(bus.subjects.events("t_own"), log, msg_id="t_own-1", stream=bus.subjects.events_stream)
    await bus.publish_unique(bus.subjects.events("t_own"), log, msg_id="t_own-1", stream=bus.subjects.events_stream)
    assert own.next_seq == 1


@pytest.mark.usefixtures("require_bwrap", "require_claude")
async def test_a_redelivered_job_whose_runner_still_heartbeats_is_not_declared_lost(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus
) -> None:
    """After a NATS blip a job may be redelivered while its runner is alive: leave it be."""
    import msgspec

    async with scripted_model(runner_settings, tmp_path) as (base, _model):
        settings = msgspec.structs.replace(base, heartbeat_s=0.5)
        async with Runner(settings, backend="bwrap", slots=1, runner_id="r-owner", kinds=("task",)):
            job = make_job(settings, bus_module.TaskRequest(description="[script:runaway] keep going"), timeout_s=300, max_turns=1000)
            await submit(bus, job)
            await _running(bus, job.task_id)
            async with Runner(settings, backend="bwrap", slots=1, runner_id="r-other", kinds=("task",)) as other:
                async with asyncio.timeout(10):
                    while not other.peer_runs("r-owner", job.task_id):
                        await asyncio.sleep(0.1)
                # the same job delivered again, as JetStream does when an ack is late
                await bus.publish(bus.subjects.jobs("task"), job, msg_id=job.task_id + "-redelivered")
                from sandbox import last_event

                # Wait until the copy was handled, not for a fixed time: it is delivered (consumer
                # seq 2) and then either settled (refused as a replay: terminated; declared lost:
                # acked after `finished`), leaving only the original job pending, or left to its
                # owner (nak), which delivers it again (seq 3).
                async with asyncio.timeout(60):
                    while True:
                        info = await bus.js.consumer_info(bus.subjects.jobs_stream, bus.subjects.job_consumer("task"))
                        seq = info.delivered.consumer_seq
                        if (seq >= 2 and info.num_ack_pending == 1) or seq >= 3:
                            break
                        await asyncio.sleep(0.1)

                assert not isinstance(await last_event(bus, job.task_id), Finished), "a live task was declared lost"
                await bus.nc.publish(bus.subjects.control(job.task_id), bus_module.encode(bus_module.Cancel(task_id=job.task_id)))
                events = await follow(bus, job.task_id, timeout=30)
    assert events[-1].status == "cancelled" and events[-1].reason == "cancelled_by_caller"
    assert sum(isinstance(e, Started) for e in events) == 1
