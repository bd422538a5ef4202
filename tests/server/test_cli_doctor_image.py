"""``taskbus doctor`` says where the per-machine sandbox image is, or what builds it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from cli import app


def _rootfs_check(env: dict[str, str]) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["doctor", "--json"], env=env)
    checks = json.loads(result.stdout)["checks"]
    return next(c for c in checks if c["name"] == "sandbox rootfs")


def test_doctor_names_the_empty_image_cache_and_the_command_that_fills_it(tmp_path: Path) -> None:
    empty = tmp_path / "cache"
    check = _rootfs_check(
        {"TASKBUS_DATA_DIR": str(tmp_path / "data"), "TASKBUS_IMAGE_CACHE_DIR": str(empty), "TASKBUS_SANDBOX_BACKEND": "bwrap"}
    )
    assert check["ok"] is False and check["required"] is True
    assert str(empty) in check["detail"] and check["fix"] == "taskbus sandbox build-image"


def test_doctor_finds_the_machine_image_from_a_fresh_data_dir(tmp_path: Path, require_bwrap: None) -> None:
    check = _rootfs_check({"TASKBUS_DATA_DIR": str(tmp_path / "data"), "TASKBUS_SANDBOX_BACKEND": "bwrap"})
    assert check["ok"] is True, check
    assert "root filesystem in " in check["detail"]
