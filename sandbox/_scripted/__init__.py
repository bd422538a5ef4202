"""The scripted model server: a real HTTP server speaking the Anthropic Messages API,
whose replies come from a script (see ``_script`` and docs/scripted-model.md)."""

from ._app import ScriptedModelApp as ScriptedModelApp
from ._log import RequestLog as RequestLog
from ._log import read_log as read_log
from ._request import estimate_tokens as estimate_tokens
from ._script import ErrorReply as ErrorReply
from ._script import Script as Script
from ._script import ScriptLoadError as ScriptLoadError
from ._script import ScriptUsage as ScriptUsage
from ._script import ToolUse as ToolUse
from ._script import Turn as Turn
from ._script import load_script as load_script
from ._script import parse_script as parse_script
from ._script import resolve_script as resolve_script
from ._script import shipped_scripts as shipped_scripts
from ._server import ScriptedModelServer as ScriptedModelServer

__all__ = [
    "ErrorReply",
    "RequestLog",
    "Script",
    "ScriptLoadError",
    "ScriptUsage",
    "ScriptedModelApp",
    "ScriptedModelServer",
    "ToolUse",
    "Turn",
    "estimate_tokens",
    "load_script",
    "parse_script",
    "read_log",
    "resolve_script",
    "shipped_scripts",
]
