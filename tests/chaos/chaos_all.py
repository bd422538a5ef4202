"""Every scenario by name, in the order the table shows them."""

from __future__ import annotations

from disk_full import disk_full_scenario
from hostile_agent import hostile_agent_scenario
from hostile_input import hostile_input_scenario
from hostile_suite import hostile_suite_scenario
from scenarios import SCENARIOS

ALL = {
    **SCENARIOS,
    "disk-full": disk_full_scenario,
    "hostile-input": hostile_input_scenario,
    "hostile-agent": hostile_agent_scenario,
    "hostile-suite": hostile_suite_scenario,
}
