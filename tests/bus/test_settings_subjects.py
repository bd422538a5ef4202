"""Settings from the environment and taskbus.toml; subjects that validate tokens."""

from __future__ import annotations

from pathlib import Path

import pytest

import bus
from bus import ConfigError, Settings, SubjectError, Subjects


def test_environment_overrides_defaults_with_typed_values() -> None:
    s = Settings.load({"TASKBUS_RUNNER_SLOTS": "4", "TASKBUS_DEFAULT_CPUS": "1.5", "TASKBUS_SANDBOX_BACKEND": "docker"})
    assert (s.runner_slots, s.default_cpus, s.sandbox_backend) == (4, 1.5, "docker")


@pytest.mark.parametrize(
    "env, variable",
    [
        ({"TASKBUS_RUNNER_SLOTS": "many"}, "TASKBUS_RUNNER_SLOTS"),
        ({"TASKBUS_RUNNER_SLOTS": "0"}, "TASKBUS_RUNNER_SLOTS"),
        ({"TASKBUS_SANDBOX_BACKEND": "lxc"}, "TASKBUS_SANDBOX_BACKEND"),
        ({"TASKBUS_HTTP_PORT": "70000"}, "TASKBUS_HTTP_PORT"),
        ({"TASKBUS_SUBJECT_PREFIX": "a.b"}, "TASKBUS_SUBJECT_PREFIX"),
        ({"TASKBUS_PRICES": "{not json"}, "TASKBUS_PRICES"),
        ({"TASKBUS_PRICES": '{"m": {"input": "cheap"}}'}, "TASKBUS_PRICES"),
    ],
)
def test_a_bad_variable_gives_an_error_naming_it(env: dict, variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.load(env)
    assert str(info.value).startswith(variable + ":")


def test_toml_file_is_read_and_environment_wins(tmp_path: Path) -> None:
    cfg = tmp_path / "taskbus.toml"
    cfg.write_text('runner_slots = 3\nsubject_prefix = "acme"\n[prices.my-model]\ninput = 1.0\noutput = 2.0\n')
    s = Settings.load({"TASKBUS_CONFIG": str(cfg), "TASKBUS_RUNNER_SLOTS": "5"})
    assert s.runner_slots == 5 and s.subject_prefix == "acme"
    assert s.prices == {"my-model": bus.ModelPrice(input=1.0, output=2.0)}


def test_unknown_toml_key_and_bad_toml_are_reported(tmp_path: Path) -> None:
    cfg = tmp_path / "taskbus.toml"
    cfg.write_text("runner_slotz = 3\n")
    with pytest.raises(ConfigError, match="runner_slotz: unknown setting"):
        Settings.load({}, toml_path=cfg)
    cfg.write_text("runner_slots = [\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        Settings.load({}, toml_path=cfg)


def test_secrets_do_not_appear_in_the_settings_repr() -> None:
    s = Settings.load({"TASKBUS_UPSTREAM_API_KEY": "sk-ant-verysecret", "TASKBUS_JOB_SECRET": "hmac-secret"})
    assert "verysecret" not in repr(s) and "hmac-secret" not in str(s)
    assert s.upstream_api_key == "sk-ant-verysecret"


def test_anthropic_api_key_is_the_fallback_upstream_key() -> None:
    assert Settings.load({"ANTHROPIC_API_KEY": "sk-ant-x"}).upstream_api_key == "sk-ant-x"
    assert Settings.load({"ANTHROPIC_API_KEY": "a", "TASKBUS_UPSTREAM_API_KEY": "b"}).upstream_api_key == "b"


def test_settings_reference_covers_every_field() -> None:
    rows = bus.settings_reference()
    assert [r[0] for r in rows] == ["TASKBUS_" + f.upper() for f in Settings.__struct_fields__]
    assert all(r[3] for r in rows), [r[0] for r in rows if not r[3]]


def test_subjects_follow_the_bus_contract() -> None:
    s = Subjects()
    assert s.submit("task") == "taskbus.submit.task"
    assert s.jobs("complete") == "taskbus.jobs.complete"
    assert s.events("t_01abc") == "taskbus.events.t_01abc"
    assert s.audit("auth_failure") == "taskbus.audit.auth_failure"
    assert s.control("t_1") == "taskbus.control.t_1"
    assert s.runner("r-1") == "taskbus.runners.r-1"
    assert (s.jobs_stream, s.events_stream, s.audit_stream) == ("TASKBUS_JOBS", "TASKBUS_EVENTS", "TASKBUS_AUDIT")
    assert Subjects("acme").events("t") == "acme.events.t"


@pytest.mark.parametrize("token", ["", "a.b", "*", ">", "a b", "x" * 129, "t\n1", "ünï"])
def test_subject_tokens_that_could_escape_their_level_are_refused(token: str) -> None:
    with pytest.raises(SubjectError):
        Subjects().events(token)


def test_job_kind_must_be_known() -> None:
    with pytest.raises(SubjectError, match="job kind"):
        Subjects().jobs("shell")  # type: ignore[arg-type]


def test_task_ids_are_unique_sortable_and_subject_safe() -> None:
    ids = [bus.new_task_id() for _ in range(1000)]
    assert len(set(ids)) == 1000
    for i in ids[:10]:
        bus.check_token(i)
    assert ids[0][:10] <= ids[-1][:10]
