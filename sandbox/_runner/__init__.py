"""The sandbox runner: jobs from the bus, Claude Code in a sandbox, events back."""

from ._events import TaskEvents as TaskEvents
from ._events import last_event as last_event
from ._hookpolicy import DENY_COMMANDS as DENY_COMMANDS
from ._runner import Runner as Runner
from ._runner import default_runner_id as default_runner_id
from ._warm import demand_file as warm_demand_file
from ._warm import seed_demand as seed_warm_classes

__all__ = ["DENY_COMMANDS", "Runner", "TaskEvents", "default_runner_id", "last_event", "seed_warm_classes", "warm_demand_file"]
