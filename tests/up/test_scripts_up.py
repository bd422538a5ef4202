"""`scripts/up --check` (what a newcomer runs) and the README's generated configuration reference."""

from __future__ import annotations

import subprocess
from pathlib import Path

from up_kit import ROOT, TASKBUS, pid_alive

from cli._up import render_reference
from cli._up._configdoc import BEGIN, END, current_section


def test_scripts_up_check_runs_the_demo_task_and_verifies_its_audit_trail(up_env: dict[str, str]) -> None:
    result = subprocess.run([str(ROOT / "scripts" / "up"), "--check"], env=up_env, cwd=ROOT, capture_output=True, text=True, timeout=900)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-5000:]
    assert "check passed" in output and "succeeded" in output
    assert "tool call Write" in output and "tool call Bash" in output  # the events, live
    assert "2 3 5 7 11 13 17 19 23 29 31 37 41 43 47" in output  # the program's output
    assert "def primes(limit):" in output  # the artifact, via the resource
    assert "cost $" in output and "chain ok" in output
    assert "warm agent)" in output  # a fresh data dir: its runner was seeded with the demo's class
    data = Path(up_env["TASKBUS_DATA_DIR"])
    assert not (data / "up.pid").exists()  # stopped again
    leftovers = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True).stdout.split()
    assert [p for p in leftovers if pid_alive(int(p))] == []


def test_scripts_up_check_fails_when_the_stack_cannot_start(up_env: dict[str, str]) -> None:
    # the control plane lives on NATS: an external NATS that does not answer stops the start
    # before any child runs, with one line that names the setting and what to do
    env = {**up_env, "TASKBUS_NATS_URL": "nats://127.0.0.1:1"}
    result = subprocess.run([TASKBUS, "up", "--check"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 1
    assert "TASKBUS_NATS_URL (nats://127.0.0.1:1) does not answer" in result.stderr and "unset" in result.stderr
    assert "Traceback" not in result.stderr and "UpError" not in result.stderr  # one clear error, no traceback
    data = Path(up_env["TASKBUS_DATA_DIR"])
    assert not (data / "up.pid").exists()
    leftovers = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True).stdout.split()
    assert [p for p in leftovers if pid_alive(int(p))] == []


def test_the_readme_configuration_reference_matches_settings() -> None:
    readme = (ROOT / "README.md").read_text()
    assert BEGIN in readme and END in readme
    assert current_section(readme) == render_reference(), "README.md is out of date: run `taskbus config-reference --update README.md`"


def test_every_setting_appears_in_the_readme() -> None:
    import msgspec

    from bus import Settings

    section = current_section((ROOT / "README.md").read_text())
    missing = [f.name for f in msgspec.structs.fields(Settings) if f"`TASKBUS_{f.name.upper()}`" not in section]
    assert missing == []


def test_config_reference_check_names_the_fix_when_the_readme_drifts(tmp_path: Path) -> None:
    stale = tmp_path / "README.md"
    stale.write_text(f"# x\n{BEGIN}\n| old |\n{END}\n")
    result = subprocess.run([TASKBUS, "config-reference", "--check", str(stale)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 1 and "config-reference --update" in result.stderr
    assert subprocess.run([TASKBUS, "config-reference", "--update", str(stale)], capture_output=True, timeout=60).returncode == 0
    assert current_section(stale.read_text()) == render_reference()


def test_the_json_schemas_shipped_in_docs_match_the_messages() -> None:
    import json

    from bus import json_schemas

    shipped = {p.stem: json.loads(p.read_text()) for p in (ROOT / "docs" / "schema").glob("*.json")}
    assert shipped == json_schemas(), "docs/schema is out of date: run `taskbus schema --out docs/schema`"
