"""Runner fixtures: the sandbox image (built once, shared), the scripted model, signed jobs."""

from __future__ import annotations

from pathlib import Path

import pytest

from bus import Settings
from sandbox import build_image
from sandbox._sandboxes._image import image_folder


@pytest.fixture(scope="session")
def image_cache() -> Path:
    """The default data dir's images folder (scripts/setup builds it), built if missing."""
    import subprocess

    settings = Settings.load({})
    docker_up = subprocess.run(["docker", "info"], capture_output=True).returncode == 0
    build_image(settings, docker=docker_up)
    return image_folder(settings).parent


@pytest.fixture
def runner_settings(settings: Settings, image_cache: Path, tmp_path: Path) -> Settings:
    data = Path(settings.data_dir)
    data.mkdir(parents=True, exist_ok=True)
    (data / "images").symlink_to(image_cache)
    return settings
