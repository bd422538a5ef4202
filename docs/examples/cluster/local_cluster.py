"""A 3-node NATS JetStream cluster on this machine, the set-up the cluster tests use
(tests/cluster/conftest.py): three nats-server processes on loopback ports joined by
authenticated routes, each with its own store folder, and the per-role NATS users of
`taskbus up` for one subject prefix. Prints the environment for `taskbus serve`,
`taskbus runner` and `taskbus audit run`; Ctrl-C stops the cluster (the stores stay).

    python docs/examples/cluster/local_cluster.py [--data DIR] [--prefix taskbus]

Then, in other shells (each line prints with its role's credentials file):

    env $(cat DIR/env.server) taskbus serve --transport http --port 8765
    env $(cat DIR/env.server) taskbus serve --transport http --port 8766   # a second server
    env $(cat DIR/env.runner) taskbus runner --id r1
    env $(cat DIR/env.audit)  taskbus audit run
    env $(cat DIR/env.cli)    taskbus doctor

On several hosts, write each node's config with `bus._embedded.write_config(...,
cluster=ClusterSpec(...))` (or by hand, docs/multi-host.md) and use TLS between hosts.
"""

from __future__ import annotations

import argparse
import secrets
import signal
import threading
from pathlib import Path

from bus import EmbeddedCluster
from bus._natsauth import ROLES, credentials_path, server_authorization
from bus._private import private_dir, write_private


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=Path("taskbus-cluster"))
    parser.add_argument("--prefix", default="taskbus")
    args = parser.parse_args()
    data = private_dir(args.data.resolve())
    secret_file = data / "job-secret"
    if not secret_file.exists():
        write_private(secret_file, secrets.token_hex(32))
    secret = secret_file.read_text().strip()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    # a fixed cluster name: JetStream knows each node by its server name (<name>-n0..n2) across restarts
    with EmbeddedCluster(data / "nats", name="taskbus-local", authorization=server_authorization(data, args.prefix)) as cluster:
        for role in ROLES:
            lines = [
                f"TASKBUS_NATS_URL={cluster.url}",
                f"TASKBUS_NATS_CREDENTIALS={credentials_path(data, role)}",
                f"TASKBUS_SUBJECT_PREFIX={args.prefix}",
                "TASKBUS_NATS_REPLICAS=3",
            ]
            if role in ("server", "runner"):
                lines.append(f"TASKBUS_JOB_SECRET={secret}")
            (data / f"env.{role}").unlink(missing_ok=True)  # this run's ports
            write_private(data / f"env.{role}", "\n".join(lines) + "\n")
        print(f"3-node NATS cluster {cluster.name!r}: {cluster.url}")
        for node in cluster.nodes:
            print(f"  {node.name}: client {node.url}, monitoring http://{node.host}:{node.monitor_port}, store {node.store_dir}")
        print(f"environment per role: {data}/env.<server|runner|audit|cli>; Ctrl-C stops the cluster")
        stop.wait()


if __name__ == "__main__":
    main()
