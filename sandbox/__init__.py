"""Sandboxes, the runner, the model gateway and the scripted model server.

Depends on ``bus`` only (never on ``server`` or ``profiles``).
"""

from ._gateway import ModelGateway as ModelGateway
from ._gateway import Upstream as Upstream
from ._providers import AnthropicProvider as AnthropicProvider
from ._providers import CompletionResult as CompletionResult
from ._providers import ModelProvider as ModelProvider
from ._runner import Runner as Runner
from ._runner import TaskEvents as TaskEvents
from ._runner import default_runner_id as default_runner_id
from ._runner import last_event as last_event
from ._runner import seed_warm_classes as seed_warm_classes
from ._runner import warm_demand_file as warm_demand_file
from ._sandboxes import BACKENDS as BACKENDS
from ._sandboxes import Sandbox as Sandbox
from ._sandboxes import SandboxBackend as SandboxBackend
from ._sandboxes import SandboxInfo as SandboxInfo
from ._sandboxes import SandboxSpec as SandboxSpec
from ._sandboxes import backend_problem as backend_problem
from ._sandboxes import build_image as build_image
from ._sandboxes import doctor_checks as doctor_checks
from ._sandboxes import get_backend as get_backend
from ._sandboxes import image_problem as image_problem
from ._sandboxes import spec_from_policy as spec_from_policy
from ._scripted import ScriptedModelServer as ScriptedModelServer
from ._scripted import load_script as load_script
from ._scripted import read_log as read_log
from ._scripted import resolve_script as resolve_script
from ._scripted import shipped_scripts as shipped_scripts
from ._tools import CLAUDE_INSTALL_HINT as CLAUDE_INSTALL_HINT
from ._tools import find_bwrap as find_bwrap
from ._tools import find_claude as find_claude

__all__ = [
    "seed_warm_classes",
    "warm_demand_file",
    "AnthropicProvider",
    "BACKENDS",
    "CompletionResult",
    "ModelGateway",
    "ModelProvider",
    "Runner",
    "Sandbox",
    "SandboxBackend",
    "SandboxSpec",
    "ScriptedModelServer",
    "TaskEvents",
    "Upstream",
    "backend_problem",
    "build_image",
    "default_runner_id",
    "doctor_checks",
    "find_bwrap",
    "find_claude",
    "get_backend",
    "image_problem",
    "last_event",
    "load_script",
    "read_log",
    "shipped_scripts",
    "spec_from_policy",
    "CLAUDE_INSTALL_HINT",
    "SandboxInfo",
    "resolve_script",
]
