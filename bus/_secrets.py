"""The job secret shared by the server and the runners.

``settings.job_secret`` wins. When it is empty, the secret lives in
``<data_dir>/job_secret``: 64 hex characters (32 random bytes), mode 0600, created
atomically on first use (a racing second process reads the winner's file).
"""

from __future__ import annotations

import logging
import os
import secrets
from pathlib import Path

from ._errors import ConfigError
from ._private import private_dir
from ._settings import Settings

logger = logging.getLogger(__name__)

SECRET_FILE = "job_secret"


def job_secret_path(settings: Settings) -> Path:
    return settings.data_path / SECRET_FILE


def load_or_create_job_secret(settings: Settings) -> str:
    """Return the HMAC job secret: the setting, else the data-dir file (created if missing)."""
    if settings.job_secret:
        return settings.job_secret
    path = job_secret_path(settings)
    try:
        value = path.read_text().strip()
    except FileNotFoundError:
        value = ""
    if value:
        return value
    private_dir(path.parent)
    fresh = secrets.token_hex(32)
    tmp = path.with_name(f".{SECRET_FILE}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)  # left by a crashed process with our pid
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, (fresh + "\n").encode())
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # atomic create-if-absent: loses to a concurrent creator
        logger.info("created job secret file %s", path)
    except FileExistsError:
        pass
    finally:
        tmp.unlink(missing_ok=True)
    value = path.read_text().strip()
    if not value:
        raise ConfigError(str(path), "job secret file is empty; delete it to have a new one made")
    return value
