"""``taskbus profiles | keys | budgets`` through typer's CliRunner, parsing ``--json``."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from bus import Bus, Settings
from cli import app

runner = CliRunner()


@pytest.fixture
def cli(settings: Settings):
    env = {
        "TASKBUS_DATA_DIR": settings.data_dir,
        "TASKBUS_NATS_URL": settings.nats_url,
        "TASKBUS_SUBJECT_PREFIX": settings.subject_prefix,
        "TASKBUS_CONFIG": None,
    }

    def invoke(*args: str, ok: bool = True):
        result = runner.invoke(app, list(args), env=env)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    invoke.settings = settings  # type: ignore[attr-defined]
    return invoke


def as_json(result) -> object:
    return json.loads(result.stdout)


def dump(settings: Settings) -> dict[str, int]:
    """The last sequence of each control-plane bucket: any write changes one."""

    async def last_seqs() -> dict[str, int]:
        async with await Bus.for_settings(settings) as bus:
            s = bus.subjects
            return {b: (await bus.js.stream_info(f"KV_{b}")).state.last_seq for b in (s.control_bucket, s.ledger_bucket, s.tasks_bucket)}

    return asyncio.run(last_seqs())


def test_the_first_keys_create_on_a_fresh_data_dir_works_and_the_key_authenticates_once_listed(cli):
    created = as_json(cli("keys", "create", "--profile", "developer", "--name", "ci", "--expires", "30d", "--json"))
    assert created["key"].startswith(created["prefix"]) and created["profile"] == "developer"
    assert created["state"] == "active" and created["expires_at"] is not None

    listed = as_json(cli("keys", "list", "--json"))
    assert [k["prefix"] for k in listed] == [created["prefix"]]
    assert created["key"] not in json.dumps(listed)
    human = cli("keys", "list")
    assert created["prefix"] in human.stdout and created["key"] not in human.output


def test_revoke_and_rotate_round_trip(cli):
    first = as_json(cli("keys", "create", "--profile", "readonly-analyst", "--json"))
    rotated = as_json(cli("keys", "rotate", first["prefix"], "--grace", "10m", "--json"))
    assert rotated["replaces"] == first["prefix"] and rotated["grace_s"] == 600
    assert rotated["key"] != first["key"]

    states = {k["prefix"]: k["state"] for k in as_json(cli("keys", "list", "--json"))}
    assert states == {first["prefix"]: "rotated", rotated["prefix"]: "active"}

    revoked = as_json(cli("keys", "revoke", rotated["prefix"], "--json"))
    assert revoked["state"] == "revoked" and "key" not in revoked


def test_profiles_create_show_update_list_delete_round_trip(cli):
    cli(
        "profiles",
        "create",
        "ops",
        "--tools",
        "Read,Grep",
        "--tools",
        "mcp__github__*",
        "--models",
        "claude-haiku-4-5",
        "--day",
        "3",
        "--month",
        "30",
        "--fs",
        "readonly",
        "--root",
        "/srv",
        "--cache",
    )
    shown = as_json(cli("profiles", "show", "ops", "--json"))
    assert shown["tools"] == ["Read", "Grep", "mcp__github__*"] and shown["budget_day_usd"] == 3.0
    assert shown["project_roots"] == ["/srv"] and shown["cache_completions"] is True

    updated = as_json(cli("profiles", "update", "ops", "--tools", "", "--rate-limit", "5", "--json"))
    assert updated["tools"] == [] and updated["rate_limit_per_min"] == 5 and updated["budget_day_usd"] == 3.0

    names = [p["name"] for p in as_json(cli("profiles", "list", "--json"))]
    assert names == ["admin", "complete-only", "developer", "ops", "readonly-analyst"]

    copy = as_json(cli("profiles", "create", "ops2", "--from", "ops", "--max-concurrent", "9", "--json"))
    assert copy["rate_limit_per_min"] == 5 and copy["max_concurrent"] == 9

    assert as_json(cli("profiles", "delete", "ops2", "--json")) == {"deleted": "ops2"}
    assert "ops2" not in [p["name"] for p in as_json(cli("profiles", "list", "--json"))]


def test_profiles_apply_is_idempotent_and_reports_what_changed(cli, tmp_path: Path):
    file = tmp_path / "profiles.toml"
    file.write_text('[profiles.bot]\nkinds = ["complete"]\nmodels = ["claude-haiku-4-5"]\nbudget_day_usd = 1.0\n')
    assert as_json(cli("profiles", "apply", "-f", str(file), "--json")) == {"created": ["bot"], "updated": {}, "unchanged": []}
    assert as_json(cli("profiles", "apply", "-f", str(file), "--json"))["unchanged"] == ["bot"]

    file.write_text(file.read_text().replace("1.0", "2.0"))
    assert as_json(cli("profiles", "apply", "-f", str(file), "--json"))["updated"] == {"bot": ["budget_day_usd"]}
    assert "no changes" in cli("profiles", "apply", "-f", str(file)).stdout


def test_budgets_set_and_show_for_a_profile_and_a_key(cli):
    key = as_json(cli("keys", "create", "--profile", "complete-only", "--json"))
    profile = as_json(cli("budgets", "set", "--profile", "complete-only", "--day", "7", "--json"))
    assert profile["budget_day_usd"] == 7.0 and profile["budget_month_usd"] == 100.0

    shown = as_json(cli("budgets", "show", "--key", key["prefix"], "--json"))
    assert shown["day"]["limit_usd"] == 7.0 and shown["day"]["used_usd"] == 0.0 and not shown["override"]

    own = as_json(cli("budgets", "set", "--key", key["prefix"], "--month", "12.5", "--json"))
    assert own["override"] and own["month"]["limit_usd"] == 12.5 and own["day"]["limit_usd"] == 7.0
    everyone = as_json(cli("budgets", "show", "--json"))
    assert [s["key_id"] for s in everyone] == [key["prefix"]]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("keys", "create", "--profile", "ghost"), "no profile named 'ghost'"),
        (("keys", "create", "--profile", "developer", "--expires", "soon"), "expiry 'soon' not understood"),
        (("keys", "revoke", "tb_nothere"), "no key with prefix 'tb_nothere'"),
        (("keys", "rotate", "tb_nothere", "--grace", "forever"), "'forever' is not a duration"),
        (("profiles", "create", "x", "--tools", "Read,Bsh"), "unknown tool 'Bsh': Claude Code 2.1.197 offers Agent, Bash,"),
        (("profiles", "create", "developer"), "profile 'developer' already exists"),
        (("profiles", "create", "Bad Name"), "profile name 'Bad Name' is not valid"),
        (("profiles", "update", "ghost", "--pids", "5"), "no profile named 'ghost'"),
        (("profiles", "update", "developer", "--day", "-1"), "budget_day_usd"),
        (("profiles", "update", "developer", "--fs", "everything"), "fs_access"),
        (("profiles", "update", "developer"), "nothing to change"),
        (("profiles", "show", "ghost"), "no profile named 'ghost'"),
        (("profiles", "apply", "-f", "/nonexistent.toml"), "cannot read /nonexistent.toml"),
        (("budgets", "set", "--profile", "developer", "--day", "-5"), "--day must be zero or more USD"),
        (("budgets", "set", "--profile", "ghost", "--day", "5"), "no profile named 'ghost'"),
        (("budgets", "set", "--day", "5"), "exactly one of --profile P or --key PREFIX"),
        (("budgets", "show", "--key", "tb_nothere"), "no key with prefix"),
    ],
)
def test_bad_input_gives_one_error_line_exit_1_and_changes_nothing(cli, args, message):
    cli("keys", "create", "--profile", "developer")
    before = dump(cli.settings)

    result = cli(*args, ok=False)

    assert result.exit_code == 1, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert result.stdout == ""
    assert dump(cli.settings) == before


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[profiles.a\n", "not valid TOML"),
        ('[profiles.a]\ntools = ["Shell"]\n', "unknown tool 'Shell'"),
        ("[profiles.a]\nbudget_month_usd = -3\n", "budget_month_usd"),
        ('[profiles.a]\nmodels = ["m"]\n[profiles.b]\ncolour = "red"\n', "unknown field"),
    ],
)
def test_a_bad_profiles_file_applies_nothing(cli, tmp_path: Path, toml, message):
    cli("profiles", "list")
    before = dump(cli.settings)
    file = tmp_path / "bad.toml"
    file.write_text(toml)

    result = cli("profiles", "apply", "-f", str(file), ok=False)

    assert result.exit_code == 1
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert dump(cli.settings) == before
