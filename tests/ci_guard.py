"""The one rule for a missing component: skip locally, FAIL under CI=true (a green CI run
must mean the test ran). Importable from every test folder (``tests/`` is on sys.path
through the root conftest)."""

from __future__ import annotations

import os

import pytest

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def require(present: bool, component: str, fix: str) -> None:
    """Skip when ``component`` is missing, except in CI where a missing component fails."""
    if present:
        return
    message = f"{component} is missing ({fix})"
    if IN_CI:
        pytest.fail(f"CI=true: {message}", pytrace=False)
    pytest.skip(message)  # not CI: see IN_CI above
