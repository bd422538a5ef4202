"""Child processes that die with the process that started them.

A nats-server (or a stack process of a test harness) started by a process that is then
SIGKILLed would keep running, holding its ports and its store: nothing is left to stop
it. ``spawn_tied`` starts the child with ``PR_SET_PDEATHSIG`` = SIGTERM set in the child
between fork and exec, so the kernel sends it SIGTERM when its parent goes, however the
parent goes.

The kernel's "parent" is the *thread* that forked, not the process: a child forked by
a worker thread (``asyncio.to_thread``) would get the signal as soon as that thread ends.
So every fork happens on one keeper thread that lives as long as the process. Elsewhere
than Linux ``spawn_tied`` is a plain ``Popen``.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import Any, cast

PR_SET_PDEATHSIG = 1
SPAWN_TIMEOUT_S = 60.0

_prctl: Callable[..., int] | None = None
if sys.platform == "linux":
    _prctl = ctypes.CDLL(None, use_errno=True).prctl

_Request = tuple[list[str], dict[str, Any], "concurrent.futures.Future[subprocess.Popen[bytes]]"]
_requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
_keepers: list[threading.Thread] = []  # the keeper of this process (a forked child makes its own)
_keepers_lock = threading.Lock()


def _die_with(parent: int, sig: int) -> Callable[[], None]:
    """The ``preexec_fn``: in the child, ask for ``sig`` when the forking thread ends; if the
    parent is already gone (it died between fork and here), go too."""
    assert _prctl is not None

    def preexec() -> None:
        if _prctl(PR_SET_PDEATHSIG, sig, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
        if os.getppid() != parent:
            os.kill(os.getpid(), sig)

    return preexec


def _keep() -> None:
    """The keeper thread: forks every tied child; never returns (a daemon thread)."""
    while True:
        argv, kwargs, result = _requests.get()
        if not result.set_running_or_notify_cancel():
            continue
        try:
            child = subprocess.Popen(argv, preexec_fn=_die_with(os.getpid(), signal.SIGTERM), **kwargs)  # noqa: PLW1509 - the keeper thread forks; see the module docstring
            result.set_result(cast("subprocess.Popen[bytes]", child))
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            result.set_exception(exc)


def spawn_tied(argv: list[str], *, timeout: float = SPAWN_TIMEOUT_S, **popen: Any) -> subprocess.Popen[bytes]:
    """``subprocess.Popen(argv, **popen)``, the child getting SIGTERM when this process dies
    (even by SIGKILL). Blocking, like ``Popen``; raises what ``Popen`` raises."""
    if _prctl is None:
        return cast("subprocess.Popen[bytes]", subprocess.Popen(argv, **popen))
    with _keepers_lock:
        if not any(keeper.is_alive() for keeper in _keepers):
            _keepers[:] = [threading.Thread(target=_keep, name="taskbus-spawn-keeper", daemon=True)]
            _keepers[0].start()
    result: concurrent.futures.Future[subprocess.Popen[bytes]] = concurrent.futures.Future()
    _requests.put((argv, popen, result))
    return result.result(timeout=timeout)
