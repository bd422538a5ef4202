"""The exec agent's program, run INSIDE a sandbox as ``python3 -I -S -c <this file>
<socket> [rlimits]`` (``_agent.agent_command`` reads it with importlib.resources;
the protocol is described in ``_agent``). Standard library only, and only C modules
(no ``typing``, no ``__future__``): it starts about as fast as the interpreter.

Importing it does nothing; it serves only when run as ``__main__``.
"""

import _signal  # type: ignore[import-not-found]  # the C half of `signal` (no stub); `signal` imports enum
import _socket
import array
import os
import resource
import select
import sys

FD = array.array("i").itemsize
KILL_SIGNALS_RESET = (_signal.SIGCHLD, _signal.SIGTERM, _signal.SIGPIPE, _signal.SIGXFSZ, _signal.SIGINT)


def set_rlimits(spec: str) -> None:
    """``NAME=soft:hard,...`` on the agent itself, so every command inherits them."""
    for item in spec.split(",") if spec else []:
        name, _, value = item.partition("=")
        soft, _, hard = value.partition(":")
        resource.setrlimit(getattr(resource, "RLIMIT_" + name), (int(soft), int(hard)))


def listen(path: str) -> _socket.socket:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    server = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    server.bind(path + ".new")
    os.chmod(path + ".new", 0o600)
    os.rename(path + ".new", path)
    server.listen(64)
    return server


def recv_exact(conn: _socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise EOFError
        data += chunk
    return data


def run_child(fds: "array.array[int]", cwd: bytes, argv: list[bytes], env: dict[bytes, bytes]) -> None:
    """In the forked child: a new session, the three fds as 0/1/2, exec; never returns."""
    try:
        os.setsid()
        for i, fd in enumerate(fds):
            os.dup2(fd, i)
        os.closerange(3, 65536)
        os.chdir(cwd)
        _signal.set_wakeup_fd(-1)
        for sig in KILL_SIGNALS_RESET:
            _signal.signal(sig, _signal.SIG_DFL)
        os.execvpe(argv[0], argv, env)
    except BaseException as exc:
        os.write(2, b"taskbus: cannot run " + argv[0] + b": " + str(exc).encode() + b"\n")
    os._exit(127)


class Agent:
    """The commands running (pid -> connection) and their connections (fd -> (connection, pid))."""

    def __init__(self, server: _socket.socket, wakeup_fd: int) -> None:
        self.server = server
        self.wakeup_fd = wakeup_fd
        self.ep = select.epoll()
        self.ep.register(server.fileno(), select.EPOLLIN)
        self.ep.register(wakeup_fd, select.EPOLLIN)
        self.running: dict[int, _socket.socket] = {}
        self.conns: dict[int, tuple[_socket.socket, int]] = {}

    def start(self, conn: _socket.socket) -> None:
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
            env: dict[bytes, bytes] = {}
            for part in parts[2 + argc :]:
                key, value = part.split(b"=", 1)  # ValueError without "=": the request is refused
                env[key] = value
            pid = os.fork()
            if pid == 0:
                run_child(fds, cwd, argv, env)
        finally:
            for fd in fds:
                os.close(fd)
        self.running[pid] = conn
        self.conns[conn.fileno()] = (conn, pid)
        self.ep.register(conn.fileno(), select.EPOLLIN)

    def reap(self) -> None:
        """Every child that ended: its connection gets ``<exit code>\\n`` and is closed."""
        os.read(self.wakeup_fd, 4096)
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = self.running.pop(pid, None)
            if conn is not None:
                if self.conns.pop(conn.fileno(), None) is not None:
                    self.ep.unregister(conn.fileno())
                try:
                    conn.sendall(b"%d\n" % os.waitstatus_to_exitcode(status))
                except OSError:
                    pass
                conn.close()

    def kill(self, fd: int) -> None:
        """A byte from the runner, or its end closed: SIGKILL the command's process group."""
        conn, pid = self.conns.pop(fd)
        self.ep.unregister(fd)
        try:
            conn.recv(16)
        except OSError:
            pass
        try:
            os.killpg(pid, _signal.SIGKILL)
        except OSError:
            pass

    def serve(self) -> None:
        while True:
            for fd, _ in self.ep.poll():
                if fd == self.server.fileno():
                    conn = _socket.socket(fileno=self.server._accept()[0])  # type: ignore[attr-defined]  # C socket's accept
                    try:
                        self.start(conn)
                    except (EOFError, OSError, ValueError, IndexError):
                        conn.close()
                elif fd == self.wakeup_fd:
                    self.reap()
                else:
                    self.kill(fd)


def main(argv: list[str]) -> None:
    set_rlimits(argv[2] if len(argv) > 2 else "")
    server = listen(argv[1])
    rfd, wfd = os.pipe()
    os.set_blocking(wfd, False)
    _signal.set_wakeup_fd(wfd)
    _signal.signal(_signal.SIGCHLD, lambda *a: None)
    _signal.signal(_signal.SIGTERM, lambda *a: sys.exit(0))
    Agent(server, rfd).serve()


if __name__ == "__main__":
    main(sys.argv)
