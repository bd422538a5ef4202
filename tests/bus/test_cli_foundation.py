"""The CLI skeleton: --version, schema, doctor."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

import bus
from cli import app

runner = CliRunner()


def test_version_prints_the_package_version() -> None:
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.output.startswith("taskbus ")


def test_schema_writes_one_json_schema_per_public_message(tmp_path: Path) -> None:
    result = runner.invoke(app, ["schema", "--out", str(tmp_path / "schema")])
    assert result.exit_code == 0, result.output
    files = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "schema").glob("*.json")}
    for typ in bus.PUBLIC_TYPES:
        assert files[typ.__name__]["title"] == typ.__name__
    assert "task" in files["Request"]["$defs"]["TaskRequest"]["properties"]["kind"]["enum"]


def test_schema_without_out_prints_one_json_document() -> None:
    result = runner.invoke(app, ["schema"])
    assert result.exit_code == 0
    assert "Finished" in json.loads(result.stdout)


def test_doctor_json_reports_every_component_with_a_fix_for_missing_ones(tmp_path: Path) -> None:
    result = runner.invoke(
        app,
        ["doctor", "--json"],
        env={
            "TASKBUS_DATA_DIR": str(tmp_path),
            "TASKBUS_CLAUDE_PATH": str(tmp_path / "no-claude"),
            "TASKBUS_NATS_URL": "nats://127.0.0.1:1",
        },
    )
    doc = json.loads(result.stdout)
    checks = {c["name"]: c for c in doc["checks"]}
    assert {"nats", "data_dir", "claude", "bwrap", "docker", "model"} <= set(checks)
    assert checks["data_dir"]["ok"] is True
    assert checks["nats"]["ok"] is False and "taskbus nats" in checks["nats"]["fix"]
    for check in checks.values():
        if not check["ok"]:
            assert check["fix"], f"{check['name']} is missing but says nothing about how to fix it"
    assert doc["ok"] is False


def test_doctor_reports_an_unwritable_data_dir(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    result = runner.invoke(app, ["doctor", "--json"], env={"TASKBUS_DATA_DIR": str(blocker / "data")})
    checks = {c["name"]: c for c in json.loads(result.stdout)["checks"]}
    assert checks["data_dir"]["ok"] is False and "TASKBUS_DATA_DIR" in checks["data_dir"]["fix"]


def test_a_bad_setting_is_one_clear_error_line_and_exit_1() -> None:
    result = runner.invoke(app, ["doctor"], env={"TASKBUS_RUNNER_SLOTS": "lots"})
    assert result.exit_code == 1
    assert "TASKBUS_RUNNER_SLOTS" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("args", [["--log-format", "xml", "schema"]])
def test_usage_errors_exit_2(args: list[str]) -> None:
    assert runner.invoke(app, args).exit_code == 2
