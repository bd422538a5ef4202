"""Catalog tests: a CLI bound to the session's NATS with a fresh subject prefix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from cli import app

runner = CliRunner()


@pytest.fixture
def cli(tmp_path: Path, nats_url: str, subjects):
    env = {
        "TASKBUS_DATA_DIR": str(tmp_path / "data"),
        "TASKBUS_NATS_URL": nats_url,
        "TASKBUS_SUBJECT_PREFIX": subjects.prefix,
        "TASKBUS_CONFIG": None,
    }

    def invoke(*args: str, ok: bool = True):
        result = runner.invoke(app, list(args), env=env)
        if ok:
            assert result.exit_code == 0, result.output
        return result

    def as_json(*args: str):
        return json.loads(invoke(*args, "--json").stdout)

    invoke.json = as_json  # type: ignore[attr-defined]
    return invoke


@pytest.fixture
def runner_settings(settings, tmp_path: Path):
    """The per-machine sandbox image linked into this test's data dir (scripts/setup builds it)."""
    from bus import Settings

    images = Settings.load({}).image_cache_path / "images"
    if not images.is_dir():
        pytest.fail("the sandbox image is missing: run `taskbus sandbox build-image`", pytrace=False)
    data = Path(settings.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    (data / "images").symlink_to(images)
    return settings
