"""Warm-agent fixtures: the runner suite's image cache and settings (tests/runner/conftest.py),
and ``backend``: each test on both backends, with the Claude Code CLI."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

_RUNNER_TESTS = Path(__file__).resolve().parent.parent / "runner"
sys.path.insert(0, str(_RUNNER_TESTS))  # runner_kit
_spec = importlib.util.spec_from_file_location("warm_runner_fixtures", _RUNNER_TESTS / "conftest.py")
assert _spec is not None and _spec.loader is not None
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)

image_cache = _fixtures.image_cache
runner_settings = _fixtures.runner_settings


@pytest.fixture(params=["bwrap", "docker"])
def backend(request: pytest.FixtureRequest) -> str:
    """Each warm-agent test on both backends (their ``require_*`` fixtures, and the CLI's,
    fail under CI when missing)."""
    request.getfixturevalue(f"require_{request.param}")
    request.getfixturevalue("require_claude")
    return str(request.param)
