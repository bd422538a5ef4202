"""A command in a sandbox made from a policy cannot reach the network, see host
secrets, write outside its workspace and tmpfs, or gain privileges (both backends)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
from pathlib import Path

import pytest

NET_PROBE = r"""
import socket, subprocess, sys
port, host_ip = int(sys.argv[1]), sys.argv[2]
def attempt(name, fn):
    try:
        fn()
        print(name, "REACHED", flush=True)
    except Exception as exc:
        print(name, "blocked", type(exc).__name__, flush=True)
def tcp(host, p):
    s = socket.create_connection((host, p), timeout=3)
    s.sendall(b"hello from the sandbox")
    s.close()
attempt("loopback", lambda: tcp("127.0.0.1", port))
attempt("host-ip", lambda: tcp(host_ip, port))
attempt("public", lambda: tcp("1.1.1.1", 443))
attempt("public-dns", lambda: tcp("8.8.8.8", 53))
attempt("dns", lambda: socket.getaddrinfo("deb.debian.org", 443))
r = subprocess.run(["bash", "-c", f"exec 3<>/dev/tcp/127.0.0.1/{port}"], capture_output=True)
print("devtcp", "REACHED" if r.returncode == 0 else "blocked", flush=True)
"""


def _host_ip() -> str:
    """A non-loopback address of this host (falls back to loopback when there is none)."""
    for _family, _, _, _, addr in socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET):
        if not addr[0].startswith("127."):
            return addr[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("10.255.255.255", 1))
            return s.getsockname()[0]
        except OSError:
            return "127.0.0.1"


async def test_command_cannot_reach_the_network(new_sandbox) -> None:  # type: ignore[no-untyped-def]
    connections: list[bytes] = []

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(await reader.read(100))
        writer.close()

    server = await asyncio.start_server(on_connect, "0.0.0.0", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        sb = await new_sandbox()
        result = await (await sb.exec(["python3", "-c", NET_PROBE, str(port), _host_ip()])).collect(timeout=60)
    finally:
        server.close()
        await server.wait_closed()
    lines = dict(line.split(" ", 1) for line in result.stdout)
    assert set(lines) == {"loopback", "host-ip", "public", "public-dns", "dns", "devtcp"}, result
    assert all(v.startswith("blocked") for v in lines.values()), lines
    assert connections == []


async def test_command_cannot_see_host_secrets(new_sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[no-untyped-def]
    secret = "s3cr3t-" + os.urandom(8).hex()
    monkeypatch.setenv("TASKBUS_TEST_SECRET", secret)
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-" + secret)
    other = tmp_path / "other-task"
    other.mkdir()
    (other / "secret.txt").write_text(secret)
    await new_sandbox(ws=other)  # another task's sandbox, alive at the same time
    sb = await new_sandbox(env={"VISIBLE": "yes"})
    probe = (
        "env; echo ---; ls -A /root; cat /etc/shadow; ls -l /var/run/docker.sock /run/docker.sock; "
        f"cat {other}/secret.txt; cat /proc/1/environ; echo; grep -rs {secret} /workspace /tmp /home /run /etc; echo done"
    )
    result = await (await sb.exec(["bash", "-c", probe])).collect(timeout=60)
    text = result.out + "\n" + result.err
    assert "done" in result.stdout
    assert secret not in text
    env = dict(line.split("=", 1) for line in result.stdout[: result.stdout.index("---")] if "=" in line)
    assert env["VISIBLE"] == "yes" and env["HOME"] == "/home/agent"
    assert not [k for k in env if k.startswith(("TASKBUS_", "ANTHROPIC_"))]
    assert "Permission denied" in result.err  # /root and the image's own shadow
    host_shadow = Path("/etc/shadow").read_text().splitlines()[0]
    assert host_shadow not in text
    assert "docker.sock" in result.err and "No such file" in result.err


async def test_command_cannot_write_outside_workspace_and_tmpfs(new_sandbox, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    project, tool, run, managed = tmp_path / "project", tmp_path / "tool", tmp_path / "run", tmp_path / "managed"
    for folder in (project, tool, run, managed):
        folder.mkdir()
    (managed / "managed-settings.json").write_text('{"permissions": {}}')
    sb = await new_sandbox(
        fs_access="readonly",
        project_root=str(project),
        ro_mounts=[(str(tool), "/opt/claude"), (str(managed), "/etc/claude-code")],
        socket_dir=str(run),
    )
    managed_view = await (await sb.exec(["cat", "/etc/claude-code/managed-settings.json"])).collect(timeout=30)
    assert managed_view.stdout == ['{"permissions": {}}']
    denied = ["/etc/x", "/usr/bin/x", "/x", "/opt/claude/x", "/project/x", "/run/taskbus/x", "/home/x", "/var/x"]
    denied += ["/etc/claude-code/managed-settings.json", "/etc/claude-code/x"]
    allowed = ["/workspace/ok", "/tmp/ok", "/home/agent/ok", "/dev/shm/ok"]
    script = "; ".join(f"(echo x >> {p}) 2>/dev/null && echo 'WROTE {p}' || echo 'blocked {p}'" for p in denied)
    script += "; " + "; ".join(f"touch {p} && echo 'ok {p}' || echo 'FAILED {p}'" for p in allowed)
    result = await (await sb.exec(["bash", "-c", script])).collect(timeout=30)
    assert result.stdout == [f"blocked {p}" for p in denied] + [f"ok {p}" for p in allowed], result
    assert (sb.workspace / "ok").exists()
    assert [list(f.iterdir()) for f in (project, tool, run)] == [[], [], []]
    assert (managed / "managed-settings.json").read_text() == '{"permissions": {}}'


async def test_command_cannot_gain_privileges(new_sandbox, workspace: Path) -> None:  # type: ignore[no-untyped-def]
    # A setuid-root binary placed in the workspace by the host must not run as root.
    shutil.copy("/usr/bin/id", workspace / "suid-id")
    os.chown(workspace / "suid-id", 0, 0)
    os.chmod(workspace / "suid-id", 0o4755)
    sb = await new_sandbox()
    os.chown(sb.workspace / "suid-id", 0, 0)  # create() hands the workspace to uid 1000
    os.chmod(sb.workspace / "suid-id", 0o4755)
    script = (
        "echo uid=$(id -u); grep -E '^(CapEff|CapPrm|NoNewPrivs)' /proc/self/status; "
        "echo suid=$(/workspace/suid-id -u); "
        "su -c id root </dev/null >/dev/null 2>&1; echo su=$?; "
        "sudo id >/dev/null 2>&1; echo sudo=$?; "
        "mkdir -p /tmp/m; mount -t tmpfs none /tmp/m >/dev/null 2>&1; echo mount=$?; "
        "python3 -c 'import os; os.setuid(0)' >/dev/null 2>&1; echo setuid=$?; "
        "echo setuid_files=$(find / -xdev -perm -4000 -type f 2>/dev/null | wc -l)"
    )
    result = await (await sb.exec(["bash", "-c", script])).collect(timeout=60)
    facts = dict(line.replace(":", "=", 1).replace("\t", "").split("=", 1) for line in result.stdout)
    assert facts["uid"] == "1000"
    assert facts["suid"] == "1000"
    assert facts["CapEff"] == facts["CapPrm"] == "0000000000000000"
    assert facts["NoNewPrivs"] == "1"
    assert facts["su"] != "0" and facts["sudo"] != "0" and facts["mount"] != "0" and facts["setuid"] != "0"
    assert facts["setuid_files"] == "0"
