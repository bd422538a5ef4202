"""``taskbus up``: the whole stack on one machine under one supervisor, and its demo.

The supervisor starts nats-server (unless ``TASKBUS_NATS_URL`` is set), the offline
scripted model (unless an upstream model is configured), the audit writer, one runner and
the MCP server as separate child processes, restarts a crashed one with backoff, and stops
them all in reverse order.
"""

from ._check import check as check
from ._check import demo_against as demo_against
from ._check import spawn_detached as spawn_detached
from ._configdoc import render_reference as render_reference
from ._configdoc import update_file as update_file
from ._demo import DEMO_DESCRIPTION as DEMO_DESCRIPTION
from ._demo import DemoResult as DemoResult
from ._demo import connect_help as connect_help
from ._firstrun import FirstRun as FirstRun
from ._firstrun import prepare as prepare
from ._panel import StatusBoard as StatusBoard
from ._permissions import permissions_example as permissions_example
from ._plan import OFFLINE_LABEL as OFFLINE_LABEL
from ._plan import Plan as Plan
from ._plan import make_plan as make_plan
from ._plan import taskbus_command as taskbus_command
from ._plan import up_runner_id as up_runner_id
from ._run import run_stack as run_stack
from ._state import pid_alive as pid_alive
from ._state import read_state as read_state
from ._state import running_pid as running_pid
from ._state import stop_leftovers as stop_leftovers
from ._supervisor import ChildSpec as ChildSpec
from ._supervisor import StartInterrupted as StartInterrupted
from ._supervisor import Supervisor as Supervisor
from ._supervisor import UpError as UpError

__all__ = [
    "DEMO_DESCRIPTION",
    "OFFLINE_LABEL",
    "ChildSpec",
    "DemoResult",
    "FirstRun",
    "Plan",
    "StartInterrupted",
    "StatusBoard",
    "Supervisor",
    "UpError",
    "check",
    "connect_help",
    "demo_against",
    "make_plan",
    "up_runner_id",
    "permissions_example",
    "pid_alive",
    "prepare",
    "read_state",
    "render_reference",
    "run_stack",
    "running_pid",
    "spawn_detached",
    "stop_leftovers",
    "taskbus_command",
    "update_file",
]
