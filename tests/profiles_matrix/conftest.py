"""Fixtures for the profile tests on a real runner: the machine's built sandbox image
(linked into each test's data dir), and the runner test kit (tests/runner/runner_kit.py)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bus import Settings
from sandbox import build_image
from sandbox._sandboxes._image import image_folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "runner"))


@pytest.fixture(scope="session")
def image_cache() -> Path:
    """The default data dir's images folder (scripts/setup builds it), built if missing."""
    docker_up = subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    settings = Settings.load({})
    build_image(settings, docker=docker_up)
    return image_folder(settings).parent


@pytest.fixture
def runner_settings(settings: Settings, image_cache: Path) -> Settings:
    """A fresh data dir whose ``images`` is the machine's built image (until the image
    cache is per machine, a fresh data dir has no root filesystem of its own)."""
    data = Path(settings.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    (data / "images").symlink_to(image_cache)
    return settings
