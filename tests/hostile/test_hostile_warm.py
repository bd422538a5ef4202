"""A task on a warm agent attacks the warm agent idle beside it (another class, same
runner): it must not see its processes, workspace or sockets, nor stop it from serving
the next task."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

import bus as bus_module
from bus import Finished, Settings, ToolResult

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "warm"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runner"))
from runner_kit import follow, make_job, scripted_model, submit
from warm_kit import started, wait_warm, warm_settings
from workspace_kit import runner_fixtures

from sandbox import Runner

image_cache = runner_fixtures.image_cache
runner_settings = runner_fixtures.runner_settings

# Look for the neighbour everywhere a sandbox could: every process's command line, the
# host's run folders, sockets anywhere, the socket mount; then kill every process it can.
PROBE = r"""
cmdlines() { for p in /proc/[0-9]*; do tr '\0' ' ' < $p/cmdline 2>/dev/null; echo; done; }
echo "claudes=$(cmdlines | grep -c '^/opt/claude/[^ ]* -p .*--input-format=stream-json')"
echo "warmids=$(cmdlines | grep -oE 'warm-[0-9a-f]{12}' | sort -u | tr '\n' ' ')"
echo "sockets=$(find / -xdev -type s 2>/dev/null | tr '\n' ' ')"
echo "runs=$(ls {runs}/warm 2>&1 | tr '\n' ' ')"
echo "sandboxes=$(ls {data}/sandboxes 2>&1 | tr '\n' ' ')"
"""
KILL = "kill -9 -1"


def _script(*commands: str) -> str:
    turns = [
        f'[[turns]]\n{"after_tool_result = true" if i else ""}\ntext = "step {i}"\n'
        f"tool_use = [{{ name = \"Bash\", input = {{ command = '''{command}''', description = \"step\" }} }}]\n"
        for i, command in enumerate(commands)
    ]
    return "\n".join(turns) + '\n[[turns]]\nafter_tool_result = true\ntext = "done"\n'


@pytest.fixture(params=["bwrap", "docker"])
def backend(request: pytest.FixtureRequest) -> str:
    request.getfixturevalue(f"require_{request.param}")
    request.getfixturevalue("require_claude")
    return str(request.param)


async def test_a_task_on_a_warm_agent_cannot_see_or_touch_the_warm_agent_beside_it(
    runner_settings: Settings, tmp_path: Path, bus: bus_module.Bus, backend: str
) -> None:
    runner_id = f"r-hostile-warm-{backend}"
    runs = runner_settings.data_path / "runs" / runner_id
    attacker_policy = {"tools": ["Bash", "Read"]}
    neighbour_policy = {"tools": ["Bash", "Read", "Write"]}
    scripts = {"probe": _script(PROBE.replace("{runs}", str(runs)).replace("{data}", str(runner_settings.data_path)), KILL)}
    async with scripted_model(warm_settings(runner_settings), tmp_path, scripts=scripts) as (settings, _m):
        async with Runner(settings, backend=backend, slots=2, runner_id=runner_id) as runner:
            for policy in (neighbour_policy, attacker_policy):
                job = make_job(settings, bus_module.TaskRequest(description="[script:hello] hi"), **policy)
                await submit(bus, job)
                await follow(bus, job.task_id, timeout=180)
            await wait_warm(runner, 2)
            assert runner.warm is not None
            neighbour = next(a for agents in runner.warm.idle.values() for a in agents if a.policy.tools == neighbour_policy["tools"])
            assert neighbour.sandbox is not None
            attack = make_job(settings, bus_module.TaskRequest(description="[script:probe] go"), **attacker_policy)
            await submit(bus, attack)
            attack_events = await follow(bus, attack.task_id, timeout=180)
            neighbour_alive = neighbour.healthy()
            after = make_job(settings, bus_module.TaskRequest(description="[script:hello] hi"), **neighbour_policy)
            await submit(bus, after)
            after_events = await follow(bus, after.task_id, timeout=180)
    assert started(attack_events).warm is True
    output = next(e for e in attack_events if isinstance(e, ToolResult)).output
    found = dict(line.split("=", 1) for line in output.splitlines() if "=" in line)
    assert found["claudes"] == "1", output  # its own Claude Code only, not the neighbour's
    assert neighbour.id not in output and neighbour.sandbox.id not in output
    assert len(found["warmids"].split()) <= 1  # at most its own (bwrap's pid 1 names its own folder)
    assert "No such file" in found["runs"] and "No such file" in found["sandboxes"], output
    assert all(sock.startswith("/run/taskbus/") for sock in found["sockets"].split()), output
    assert neighbour_alive, "the neighbour's Claude Code survived the attack"
    assert started(after_events).warm is True and started(after_events).sandbox_id == neighbour.sandbox.id
    finished = after_events[-1]
    assert isinstance(finished, Finished) and finished.status == "succeeded", finished
