#!/usr/bin/python3 -I -S
"""taskbus PreToolUse hook for Claude Code, run inside the sandbox (stdlib only).

Mounted read-only at /opt/taskbus/hook.py and registered in the read-only managed
settings as ``/usr/bin/python3 -I -S /opt/taskbus/hook.py``: isolated mode ignores
PYTHON* variables, the user site folder and the working folder, and ``-S`` skips
``site`` (so no sitecustomize/usercustomize or .pth file planted in the home, the
workspace or /tmp is ever imported). It decides nothing itself: it sends the hook
event to the runner's socket (/run/taskbus/hook.sock) and obeys the answer. To block a
call it prints the reason on stderr and exits 2; it also blocks when the runner
cannot be reached or answers anything unexpected (fail closed).
"""

from __future__ import annotations

import json
import os
import socket
import sys

# Not `from typing import TYPE_CHECKING`: importing typing costs ~3 ms on every tool call.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, NoReturn

SOCKET = "/run/taskbus/hook.sock"
TIMEOUT_S = 25
MAX_INPUT = 64 * 1024 * 1024
MAX_ANSWER = 64 * 1024
PATH_KEYS = ("file_path", "notebook_path", "path")
# the inputs the runner's rules read; the rest (file contents of a Write...) stays here
DECISION_KEYS = (*PATH_KEYS, "command", "subagent_type", "skill", "name", "url")


def block(reason: str) -> NoReturn:
    sys.stderr.write(reason[:4000] + "\n")
    sys.exit(2)


def fail(detail: str) -> NoReturn:
    block(f"[taskbus policy: hook_error] the tool call is refused: {detail}")


def decision_request(event: dict[str, Any]) -> dict[str, Any]:
    """What the runner needs: the tool, the inputs its rules read, and the path inputs
    resolved here, where the links are, so that the runner checks the targets too."""
    tool_input = event.get("tool_input")
    if not isinstance(tool_input, dict):
        return event
    given_cwd = event.get("cwd")
    cwd = given_cwd if isinstance(given_cwd, str) else "/workspace"
    request = {
        "tool_name": event.get("tool_name"),
        "cwd": event.get("cwd"),
        "tool_input": {key: tool_input[key] for key in DECISION_KEYS if key in tool_input},
    }
    resolved: dict[str, str] = {}
    for key in PATH_KEYS:
        value = tool_input.get(key)
        if isinstance(value, str) and value:
            try:
                resolved[key] = os.path.realpath(os.path.join(cwd, value))
            except (OSError, ValueError):
                resolved[key] = "/"  # unresolvable: checked as the root, so refused
    request["taskbus_realpath"] = resolved
    return request


def ask(request: bytes) -> Any:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    conn.settimeout(TIMEOUT_S)
    try:
        conn.connect(SOCKET)
        conn.sendall(request)
        conn.shutdown(socket.SHUT_WR)
        chunks: list[bytes] = []
        size = 0
        while True:
            chunk = conn.recv(65536)
            if not chunk:
                break
            size += len(chunk)
            if size > MAX_ANSWER:
                fail("the runner's answer is too large")
            chunks.append(chunk)
    finally:
        conn.close()
    return json.loads(b"".join(chunks))


def main() -> None:
    try:
        raw = sys.stdin.buffer.read(MAX_INPUT + 1)
        if len(raw) > MAX_INPUT:
            fail(f"the hook input is larger than {MAX_INPUT} bytes")
        event = json.loads(raw)
        if not isinstance(event, dict):
            fail("the hook input is not a JSON object")
        answer = ask(json.dumps(decision_request(event)).encode())
    except SystemExit:
        raise
    except Exception as exc:  # fail closed: no answer, no tool call
        fail(f"cannot reach the taskbus runner ({type(exc).__name__})")
    if isinstance(answer, dict) and answer.get("decision") == "allow":
        sys.exit(0)
    if isinstance(answer, dict) and answer.get("decision") == "block" and isinstance(answer.get("reason"), str):
        block(answer["reason"])
    fail("the runner's answer is not understood")


if __name__ == "__main__":
    main()
