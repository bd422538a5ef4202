"""The composition root: dispatch service, MCP server, NATS submit gateway, model router, CLI."""

from ._dispatch import Caller as Caller
from ._dispatch import Dispatcher as Dispatcher
from ._dispatch import Submission as Submission
from ._http import create_http_app as create_http_app
from ._mcp_app import create_mcp_server as create_mcp_server
from ._router import Route as Route
from ._router import route_model as route_model
from ._service import run_server as run_server
from ._submit_gateway import SubmitGateway as SubmitGateway

__all__ = [
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
