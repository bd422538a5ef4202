#!/usr/bin/env python3
"""taskbus in-sandbox forwarder: loopback TCP -> the model gateway's unix socket.

Runs INSIDE the sandbox (Debian bookworm, python3 3.11, standard library only):

    python3 -I /opt/taskbus/forwarder.py --listen 127.0.0.1:8080 --socket /run/taskbus/model.sock

and Claude Code gets ``ANTHROPIC_BASE_URL=http://127.0.0.1:8080``. Every accepted TCP
connection gets its own connection to the unix socket and bytes are copied both ways
unchanged (the gateway on the other side speaks HTTP; this script does not look at it).
A half-close (EOF) on one side is passed on to the other, and the connection is
closed when both directions are done or either side fails.

Once listening it prints ``ready <host>:<port>`` on stdout (port 0 picks a free port).
SIGTERM or SIGINT stops it. Errors go to stderr, one line each; the exit status is 0
after a signal, 2 for bad arguments, 1 when it cannot listen.
"""

import argparse
import asyncio
import ipaddress
import signal
import sys

CHUNK = 65536


def _log(message: str) -> None:
    sys.stderr.write("forwarder: " + message + "\n")
    sys.stderr.flush()


def _parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise argparse.ArgumentTypeError("expected HOST:PORT, e.g. 127.0.0.1:8080")
    host = host.strip("[]") or "127.0.0.1"
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise argparse.ArgumentTypeError(f"{host} is not a loopback address; the forwarder only listens on loopback")
    return host, int(port)


class _Link:
    """One client connection and its gateway connection."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path
        self.writers: list[asyncio.StreamWriter] = []

    def _abort_all(self) -> None:
        for writer in self.writers:
            transport = writer.transport
            if not transport.is_closing():
                transport.abort()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                writer.write(data)
                await writer.drain()
            if writer.can_write_eof() and not writer.transport.is_closing():
                writer.write_eof()
        except (ConnectionError, OSError):
            self._abort_all()

    async def run(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        self.writers.append(client_writer)
        try:
            gateway_reader, gateway_writer = await asyncio.open_unix_connection(self.socket_path, limit=CHUNK)
        except OSError as exc:
            _log(f"cannot reach the model gateway at {self.socket_path}: {exc.strerror or exc}")
            client_writer.transport.abort()
            return
        self.writers.append(gateway_writer)
        try:
            await asyncio.gather(
                self._pipe(client_reader, gateway_writer),
                self._pipe(gateway_reader, client_writer),
            )
        finally:
            for writer in self.writers:
                writer.close()


async def _serve(host: str, port: int, socket_path: str) -> int:
    links: set[asyncio.Task[None]] = set()

    async def on_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None  # a stream callback always runs in a task
        links.add(task)
        try:
            await _Link(socket_path).run(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        except Exception as exc:  # one broken connection never stops the forwarder
            _log(f"connection failed: {type(exc).__name__}: {exc}")
            writer.transport.abort()
        finally:
            links.discard(task)

    try:
        server = await asyncio.start_server(on_client, host, port, backlog=512, limit=CHUNK)
    except OSError as exc:
        _log(f"cannot listen on {host}:{port}: {exc.strerror or exc}")
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    bound = server.sockets[0].getsockname()
    sys.stdout.write(f"ready {bound[0]}:{bound[1]}\n")
    sys.stdout.flush()
    async with server:
        await stop.wait()
    for task in list(links):
        task.cancel()
    if links:
        await asyncio.wait(list(links), timeout=2.0)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="forwarder.py", description="Forward loopback TCP connections to the taskbus model gateway's unix socket."
    )
    parser.add_argument("--listen", required=True, type=_parse_listen, help="HOST:PORT on loopback, e.g. 127.0.0.1:8080")
    parser.add_argument("--socket", required=True, help="the gateway's unix socket, e.g. /run/taskbus/model.sock")
    args = parser.parse_args(argv)
    host, port = args.listen
    return asyncio.run(_serve(host, port, args.socket))


if __name__ == "__main__":
    sys.exit(main())
