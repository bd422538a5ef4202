"""A real 3-node NATS cluster per test module: three nats-server processes on loopback
ports joined by authenticated routes, JetStream on each with its own store folder, and the
per-role users of ``taskbus up`` (bus._natsauth) for one subject prefix, plus an admin user
without subject limits (tests that need a fresh prefix per test connect as it).

``cluster.kill(i)`` SIGKILLs node i; ``cluster.restart(i)`` starts it again on the same
ports and store and waits until its JetStream reports healthy (it rejoined).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from nats_users import with_unlimited_user

from bus import Bus, EmbeddedCluster, Settings
from bus._natsauth import credentials_path
from bus._private import private_dir

ADMIN = "cluster-admin.json"


@dataclass
class Cluster:
    nats: EmbeddedCluster
    data: Path
    """The data dir holding ``nats-auth/<role>.json`` for ``prefix`` and the admin user."""
    prefix: str

    @property
    def url(self) -> str:
        return self.nats.url

    def credentials(self, role: str) -> str:
        return str(self.data / ADMIN) if role == "admin" else str(credentials_path(self.data, role))

    def settings(self, role: str = "server", *, prefix: str | None = None, **changes: Any) -> Settings:
        """Settings on this cluster as ``role`` (``admin``: any prefix), replicas 3."""
        return Settings.load(
            {},
            **{
                "data_dir": str(self.data),
                "nats_url": self.url,
                "subject_prefix": prefix or self.prefix,
                "nats_credentials": self.credentials(role),
                "nats_replicas": 3,
                "job_secret": "cluster-" + uuid.uuid4().hex,
                **changes,
            },
        )

    def kill(self, i: int) -> None:
        self.nats.kill(i)

    def restart(self, i: int) -> None:
        self.nats.restart(i)


def admin_authorization(data: Path, prefix: str) -> str:
    """``taskbus up``'s users for ``prefix`` plus an admin user without subject limits."""
    return with_unlimited_user(data, prefix, user="cluster-admin", credentials=ADMIN)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    base = tmp_path_factory.mktemp("cluster")
    data = private_dir(base / "data")
    prefix = "c" + uuid.uuid4().hex[:8]
    with EmbeddedCluster(base / "nats", authorization=admin_authorization(data, prefix)) as nats:
        yield Cluster(nats=nats, data=data, prefix=prefix)


@pytest.fixture
async def admin_bus(cluster: Cluster) -> AsyncIterator[Bus]:
    """The admin user on a fresh prefix with replicas 3."""
    settings = cluster.settings("admin", prefix="t" + uuid.uuid4().hex[:10])
    async with await Bus.for_settings(settings, name="pytest-cluster") as bus:
        yield bus
