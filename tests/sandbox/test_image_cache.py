"""The sandbox image is a per-machine cache shared by every data dir; a runner (root) uses a
root filesystem only from folders nobody else can write, and still finds an older data dir's."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from bus import SandboxUnavailable, Settings
from sandbox._sandboxes import build_image, find_rootfs
from sandbox._sandboxes._image import image_folder, image_key

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the ownership rules tested here are the root runner's")


@pytest.fixture
def cache(tmp_path: Path, image_cache: Path) -> Settings:
    """Settings whose image cache is a folder of this test's own, filled by adopting the shared
    image (hard links: no mmdebstrap); the data dir is fresh."""
    settings = Settings.load({}, data_dir=str(tmp_path / "data"), image_cache_dir=str(tmp_path / "cache"))
    info = build_image(settings, docker=False)
    assert not info.built and Path(info.rootfs) == image_folder(settings) / "rootfs"
    return settings


def test_a_fresh_data_dir_finds_the_root_filesystem_in_the_machine_cache(cache: Settings) -> None:
    assert not cache.data_path.exists()
    assert find_rootfs(cache) == (image_folder(cache) / "rootfs").resolve()


def test_a_cache_folder_writable_by_others_is_refused(cache: Settings) -> None:
    images = cache.image_cache_path / "images"
    os.chmod(images, 0o777)  # a local user could swap the key folder for a root filesystem of theirs
    try:
        with pytest.raises(SandboxUnavailable, match="writable by group or others"):
            find_rootfs(cache)
        with pytest.raises(SandboxUnavailable, match="TASKBUS_IMAGE_CACHE_DIR"):
            build_image(cache, docker=False)
    finally:
        os.chmod(images, 0o755)
    assert find_rootfs(cache)


def test_a_cache_folder_owned_by_another_user_is_refused(cache: Settings) -> None:
    folder = image_folder(cache)
    os.chown(folder, 1000, 1000)
    try:
        with pytest.raises(SandboxUnavailable, match="owned by uid 1000"):
            find_rootfs(cache)
    finally:
        os.chown(folder, 0, 0)


def test_an_image_in_an_older_versions_data_dir_is_still_found(cache: Settings, tmp_path: Path) -> None:
    older = Settings.load({}, data_dir=str(tmp_path / "old-data"), image_cache_dir=str(tmp_path / "empty"))
    (older.data_path / "images").mkdir(parents=True)
    (older.data_path / "images" / image_key()).symlink_to(image_folder(cache))
    assert find_rootfs(older) == (image_folder(cache) / "rootfs").resolve()


def test_a_missing_image_names_the_cache_and_the_command_that_builds_it(tmp_path: Path) -> None:
    settings = Settings.load({}, data_dir=str(tmp_path / "data"), image_cache_dir=str(tmp_path / "nothing"))
    with pytest.raises(SandboxUnavailable) as caught:
        find_rootfs(settings)
    assert str(tmp_path / "nothing") in caught.value.describe()
    assert "taskbus sandbox build-image" in caught.value.describe()
