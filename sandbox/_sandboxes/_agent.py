"""The exec agent: pid 1 of every Docker sandbox, so an exec costs a fork, not a ``runc exec``.

It runs inside the container as the sandbox user (``python3 -I -S -c AGENT_SOURCE
<socket>``) and listens on a unix socket in a per-sandbox host folder bound at
/run/taskbus-agent. A request is: ``sendmsg`` of a 4-byte length with three file
descriptors (stdin: a pipe; stdout, stderr: one-way socket pairs, which no process can
reopen through /proc; the runner holds the other ends), then
that many bytes: cwd, argc, the arguments and ``KEY=value`` pairs separated by NUL. The agent forks, the child
starts a new session, takes the three fds as 0/1/2, chdirs and execs; the agent
answers ``<exit code>\\n`` on the connection when the child ends (negative: killed
by that signal). A byte from the runner (or closing the connection) SIGKILLs the
command's process group. As pid 1 it also reaps orphans.

The agent has no more rights than the commands it starts (same uid, same
sandbox, same limits); a command that talks to it gains nothing. It imports only C
modules, so it starts about as fast as the interpreter itself. Both backends use
it: pid 1 of a Docker container, the first process of a bwrap sandbox.
"""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from bus import SandboxError

from ._exec import Execution

AGENT_DIR = "/run/taskbus-agent"
AGENT_SOCKET = "agent.sock"

AGENT_SOURCE = r"""
import _signal, _socket, array, os, resource, select, sys
path = sys.argv[1]
for item in (sys.argv[2].split(",") if len(sys.argv) > 2 else []):
    name, _, value = item.partition("=")
    soft, _, hard = value.partition(":")
    resource.setrlimit(getattr(resource, "RLIMIT_" + name), (int(soft), int(hard)))
try:
    os.unlink(path)
except FileNotFoundError:
    pass
server = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
server.bind(path + ".new")
os.chmod(path + ".new", 0o600)
os.rename(path + ".new", path)
server.listen(64)
rfd, wfd = os.pipe()
os.set_blocking(wfd, False)
_signal.set_wakeup_fd(wfd)
_signal.signal(_signal.SIGCHLD, lambda *a: None)
_signal.signal(_signal.SIGTERM, lambda *a: sys.exit(0))
ep = select.epoll()
ep.register(server.fileno(), select.EPOLLIN)
ep.register(rfd, select.EPOLLIN)
running, conns = {}, {}
FD = array.array("i").itemsize
def recv_exact(conn, n):
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data
def start(conn):
    msg, anc, _, _ = conn.recvmsg(4, _socket.CMSG_SPACE(3 * FD))
    fds = array.array("i")
    for level, kind, data in anc:
        if level == _socket.SOL_SOCKET and kind == _socket.SCM_RIGHTS:
            fds.frombytes(data[: len(data) - len(data) % FD])
    try:
        if len(msg) != 4 or len(fds) != 3:
            raise EOFError
        parts = recv_exact(conn, int.from_bytes(msg, "big")).split(b"\0")
        argc = int(parts[1])
        cwd, argv = parts[0], parts[2 : 2 + argc]
        env = dict(p.split(b"=", 1) for p in parts[2 + argc :])
        pid = os.fork()
        if pid == 0:
            try:
                os.setsid()
                for i, fd in enumerate(fds):
                    os.dup2(fd, i)
                os.closerange(3, 65536)
                os.chdir(cwd)
                _signal.set_wakeup_fd(-1)
                for s in (_signal.SIGCHLD, _signal.SIGTERM, _signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGINT):
                    _signal.signal(s, _signal.SIG_DFL)
                os.execvpe(argv[0], argv, env)
            except BaseException as exc:
                os.write(2, b"taskbus: cannot run " + argv[0] + b": " + str(exc).encode() + b"\n")
            os._exit(127)
    finally:
        for fd in fds:
            os.close(fd)
    running[pid] = conn
    conns[conn.fileno()] = (conn, pid)
    ep.register(conn.fileno(), select.EPOLLIN)
while True:
    for fd, _ in ep.poll():
        if fd == server.fileno():
            conn = _socket.socket(fileno=server._accept()[0])
            try:
                start(conn)
            except (EOFError, OSError, ValueError, IndexError):
                conn.close()
        elif fd == rfd:
            os.read(rfd, 4096)
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    break
                if pid == 0:
                    break
                conn = running.pop(pid, None)
                if conn is not None:
                    if conns.pop(conn.fileno(), None) is not None:
                        ep.unregister(conn.fileno())
                    try:
                        conn.sendall(b"%d\n" % os.waitstatus_to_exitcode(status))
                    except OSError:
                        pass
                    conn.close()
        else:
            conn, pid = conns.pop(fd)
            ep.unregister(fd)
            try:
                conn.recv(16)
            except OSError:
                pass
            try:
                os.killpg(pid, _signal.SIGKILL)
            except OSError:
                pass
"""


def agent_command(rlimits: dict[str, tuple[int, int]] | None = None) -> list[str]:
    """The agent's command line; ``rlimits`` (name -> (soft, hard)) it sets on itself
    first, so every command it starts inherits them."""
    argv = ["python3", "-I", "-S", "-c", AGENT_SOURCE, f"{AGENT_DIR}/{AGENT_SOCKET}"]
    if not rlimits:
        return argv
    return [*argv, ",".join(f"{name}={soft}:{hard}" for name, (soft, hard) in rlimits.items())]


async def wait_for_agent(folder: Path, *, timeout: float = 15.0) -> None:
    """Poll until the agent in the sandbox whose host folder is ``folder`` accepts
    connections (it starts with the container). Raises TimeoutError."""
    loop = asyncio.get_running_loop()
    fd = os.open(folder / "agent", os.O_PATH | os.O_CLOEXEC)
    path = f"/proc/self/fd/{fd}/{AGENT_SOCKET}"  # unix socket paths are limited to 108 bytes
    try:
        await _poll_connect(loop, path, timeout)
    finally:
        os.close(fd)


async def _poll_connect(loop: asyncio.AbstractEventLoop, path: str, timeout: float) -> None:
    async with asyncio.timeout(timeout):
        delay = 0.001
        while True:
            if os.path.exists(path):
                probe = socket.socket(socket.AF_UNIX)
                probe.setblocking(False)
                try:
                    await loop.sock_connect(probe, path)
                    return
                except OSError:
                    pass
                finally:
                    probe.close()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.004)


def _encode(argv: list[str], env: dict[str, str], cwd: str) -> bytes:
    """cwd, argc, argv..., KEY=value... separated by NUL (which none of them may hold)."""
    fields = [cwd, str(len(argv)), *argv, *(f"{k}={v}" for k, v in env.items())]
    if any("\0" in f for f in fields) or any("=" in k or not k for k in env):
        raise SandboxError("a command, argument or environment variable holds a NUL byte (or a bad name)")
    return b"\0".join(f.encode() for f in fields)


def _output_channel() -> tuple[int, int]:
    """(read end, write end) for a command's stdout or stderr: a one-way socket pair,
    not a pipe, so no other process in the sandbox can open it again through
    ``/proc/<pid>/fd/1`` (``open`` of a socket fails) to forge the command's output."""
    reader, writer = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader.shutdown(socket.SHUT_WR)
    writer.shutdown(socket.SHUT_RD)
    return reader.detach(), writer.detach()


class AgentProcess:
    """Runner side of one command started through the agent."""

    def __init__(self, sock: socket.socket, stdout: int, stderr: int, stdin: int | None) -> None:
        self.sock = sock
        self.stdout = stdout
        self.stderr = stderr
        self.stdin = stdin

    @classmethod
    async def start(cls, path: str, argv: list[str], env: dict[str, str], cwd: str, *, with_stdin: bool) -> AgentProcess:
        loop = asyncio.get_running_loop()
        payload = _encode(argv, env, cwd)
        out_r, out_w = _output_channel()
        err_r, err_w = _output_channel()
        if with_stdin:
            in_r, in_w = os.pipe()
        else:
            in_r, in_w = os.open(os.devnull, os.O_RDONLY), None
        sock = socket.socket(socket.AF_UNIX)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, path)
            sock.setblocking(True)
            socket.send_fds(sock, [len(payload).to_bytes(4, "big")], [in_r, out_w, err_w])
            sock.setblocking(False)
            await loop.sock_sendall(sock, payload)
        except BaseException as exc:
            sock.close()
            for fd in (out_r, err_r, in_w):
                if fd is not None:
                    os.close(fd)
            if isinstance(exc, OSError):
                raise SandboxError(
                    f"the sandbox's exec agent is not answering ({exc.strerror or exc}); the sandbox may have been killed"
                ) from None
            raise
        finally:
            for fd in (in_r, out_w, err_w):
                os.close(fd)
        return cls(sock, out_r, err_r, in_w)

    async def wait(self) -> int:
        """The exit code the agent reports; -9 when the sandbox died under it."""
        loop = asyncio.get_running_loop()
        data = b""
        try:
            while not data.endswith(b"\n"):
                chunk = await loop.sock_recv(self.sock, 64)
                if not chunk:
                    break
                data += chunk
        except OSError:
            pass
        finally:
            self.sock.close()
        try:
            return int(data.strip())
        except ValueError:
            return -9

    def kill(self) -> None:
        try:
            self.sock.send(b"K")
        except OSError:
            pass


async def agent_exec(
    socket_path: str,
    argv: list[str],
    *,
    env: dict[str, str],
    stdin: bytes | AsyncIterator[bytes] | None,
    cwd: str,
    timed_out: Callable[[], bool],
) -> Execution:
    """Start ``argv`` through the agent; the Execution streams its pipes line by line."""
    from ._host import feed_fd, pump_fd

    proc = await AgentProcess.start(socket_path, argv, env, cwd, with_stdin=stdin is not None)

    async def kill_one() -> None:
        proc.kill()

    ex = Execution(argv, kill=kill_one, timed_out=timed_out)
    loop = asyncio.get_running_loop()
    ex._track(loop.create_task(pump_fd(proc.stdout, "stdout", ex)))
    ex._track(loop.create_task(pump_fd(proc.stderr, "stderr", ex)))
    if proc.stdin is not None:
        ex._track(loop.create_task(feed_fd(proc.stdin, stdin if stdin is not None else b"")))

    async def reap() -> None:
        ex._set_exit(await proc.wait())

    ex._track(loop.create_task(reap()))
    return ex
