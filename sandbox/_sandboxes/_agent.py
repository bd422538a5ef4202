"""The exec agent: pid 1 of every Docker sandbox, so an exec costs a fork, not a ``runc exec``.

It runs inside the container as the sandbox user (``python3 -I -S -c <exec_agent.py>
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
from importlib import resources
from pathlib import Path

from bus import SandboxError

from ._exec import Execution
from ._host import feed_fd, pump_fd

AGENT_DIR = "/run/taskbus-agent"
AGENT_SOCKET = "agent.sock"

AGENT_SOURCE = resources.files(__package__).joinpath("exec_agent.py").read_text()
"""The agent's program (``exec_agent.py``), passed with ``-c``: nothing is mounted for it."""


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
            if os.path.exists(path):  # noqa: ASYNC240 (one stat of a local socket path, polled)
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
