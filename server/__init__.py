"""The ``taskbus serve`` process: dispatch service, MCP server, NATS submit gateway, model
router, console. The CLI (``cli/``) drives it through the names exported here."""

from ._artifacts import download as download
from ._artifacts import list_artifacts as list_artifacts
from ._catalog import add_bundles as add_bundles
from ._catalog import open_catalog as open_catalog
from ._catalog import remove_entry as remove_entry
from ._catalog_files import read_agents as read_agents
from ._catalog_files import read_skill as read_skill
from ._console import console_enabled as console_enabled
from ._dispatch import Caller as Caller
from ._dispatch import Dispatcher as Dispatcher
from ._dispatch import Submission as Submission
from ._dispatch_events import TaskWatch as TaskWatch
from ._dispatch_events import follow_events as follow_events
from ._dispatch_events import replay_events as replay_events
from ._http import create_http_app as create_http_app
from ._mcp_app import create_mcp_server as create_mcp_server
from ._mcp_results import event_summary as event_summary
from ._router import Route as Route
from ._router import route_model as route_model
from ._service import Transport as Transport
from ._service import run_server as run_server
from ._submit_gateway import SubmitGateway as SubmitGateway

__all__ = [
    "Transport",
    "download",
    "list_artifacts",
    "add_bundles",
    "open_catalog",
    "remove_entry",
    "read_agents",
    "read_skill",
    "console_enabled",
    "TaskWatch",
    "follow_events",
    "replay_events",
    "event_summary",
    "Caller",
    "Dispatcher",
    "Route",
    "Submission",
    "SubmitGateway",
    "create_http_app",
    "create_mcp_server",
    "route_model",
    "run_server",
]
