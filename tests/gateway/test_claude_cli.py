"""The real Claude Code CLI inside a real bubblewrap sandbox, reaching the scripted model
only through the in-sandbox forwarder, the unix socket and the gateway."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path

import pytest

from bus import Settings
from sandbox._sandboxes import build_image, get_backend, spec_from_policy
from sandbox._sandboxes._image import image_folder

from .conftest import MODEL, make_policy, open_stack

PORT = 8080


@pytest.fixture(scope="module")
def image_cache() -> Path:
    """The sandbox root filesystem from the default data dir (built once if missing)."""
    settings = Settings.load({})
    build_image(settings, docker=False)
    return image_folder(settings).parent


async def run_claude_in_bwrap(
    tmp_path: Path, image_cache: Path, stack, claude: Path, prompt: str, *, model: str = MODEL
) -> tuple[int, list[dict], Path]:
    data = tmp_path / "sbdata"
    data.mkdir()
    (data / "images").symlink_to(image_cache)
    backend = get_backend("bwrap", Settings.load({}, data_dir=str(data)))
    opt = tmp_path / "opt"
    opt.mkdir()
    shutil.copy(Path(__file__).resolve().parents[2] / "sandbox" / "_forwarder.py", opt / "forwarder.py")
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    spec = spec_from_policy(
        make_policy(memory_mb=2048, pids=256, timeout_s=120),
        runner_id="gateway-test",
        workspace=str(workspace),
        ro_mounts=[(str(claude.parent), "/opt/claude"), (str(opt), "/opt/taskbus")],
        socket_dir=str(stack.socket_path.parent),
    )
    lines: list[dict] = []
    try:
        async with await backend.create(spec) as sandbox:
            forwarder = await sandbox.exec(
                ["python3", "-I", "/opt/taskbus/forwarder.py", "--listen", f"127.0.0.1:{PORT}", "--socket", "/run/taskbus/model.sock"],
                cwd="/tmp",
            )
            async with asyncio.timeout(20):
                async for stream, line in forwarder:
                    if stream == "stdout" and line.startswith("ready"):
                        break
            env = {
                "ANTHROPIC_BASE_URL": f"http://127.0.0.1:{PORT}",
                "ANTHROPIC_API_KEY": stack.placeholder,
                "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
                "DISABLE_AUTOUPDATER": "1",
            }
            argv = [
                f"/opt/claude/{claude.name}",
                "-p",
                "--output-format=stream-json",
                "--verbose",
                f"--model={model}",
                "--max-turns=6",
                "--allowedTools=Bash",
                "--no-session-persistence",
            ]
            proc = await sandbox.exec(argv, env=env, stdin=prompt.encode())
            async with asyncio.timeout(100):
                async for stream, line in proc:
                    if stream == "stdout" and line.startswith("{"):
                        lines.append(json.loads(line))
                code = await proc.wait()
    finally:
        await backend.close()
    return code, lines, workspace


async def test_claude_code_in_bwrap_works_through_forwarder_and_gateway(
    tmp_path: Path, require_bwrap: None, require_claude: Path, image_cache: Path
) -> None:
    async with open_stack(tmp_path, "write-a-file", tools=["Bash"]) as stack:
        code, lines, workspace = await run_claude_in_bwrap(tmp_path, image_cache, stack, require_claude, "write the file")
        upstream = stack.upstream_requests()
    result = lines[-1]
    assert code == 0 and result["type"] == "result" and not result["is_error"], result
    assert (workspace / "hello.txt").read_text() == "hello from the scripted model\n"
    # Claude Code offered ~24 tools; the model saw only the policy's.
    assert upstream and all(set(r["tools"]) <= {"Bash"} for r in upstream)
    assert any(r["tools"] == ["Bash"] for r in upstream)
    assert "Write" in stack.gateway.dropped_tools and "WebFetch" in stack.gateway.dropped_tools
    # Every model call was metered, and only the placeholder ever was in the sandbox.
    assert len([c for c in stack.calls if c.status == 200]) == len(upstream)
    assert stack.gateway.spent_usd == pytest.approx(sum(c.cost_usd for c in stack.calls))
    assert stack.real_key not in json.dumps(lines)


async def test_claude_code_stops_at_the_cost_cap_without_retrying(
    tmp_path: Path, require_bwrap: None, require_claude: Path, image_cache: Path
) -> None:
    opus = "claude-opus-4-8"
    # each expensive call costs ~1.25 USD and reserves ~1.6 USD of worst-case input (the whole
    # prompt, cache included): with 3.4 the first two fit whole and the third is refused
    async with open_stack(tmp_path, "expensive", tools=["Bash"], models=[opus], model=opus, max_cost_usd=3.4) as stack:
        _code, lines, _ = await run_claude_in_bwrap(tmp_path, image_cache, stack, require_claude, "do it", model=opus)
        upstream = stack.upstream_requests()
    result = lines[-1]
    assert result["type"] == "result" and result["is_error"], result
    assert stack.gateway.exhausted
    assert stack.gateway.spent_usd <= 3.4
    assert stack.gateway.meter.refusals == 1  # Claude Code took the refusal as final: no retry
    assert len(upstream) == 2
