"""Strict MCP tool arguments: one validation, one error shape.

The SDK validates a tool's arguments with pydantic and, on failure, answers with its own
text ("Error executing tool run_task: 1 validation error for run_taskArguments ...");
unknown arguments it drops silently. ``StrictMCPServer`` validates first, against the
very model the SDK uses, and refuses with ``InvalidInput`` in the documented shape
(``[invalid_input] ...`` plus ``structured_content.error``): an unknown argument names
itself and the nearest valid name, a type or range error names the argument and what
it must be. Every advertised ``inputSchema`` says ``additionalProperties: false``.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from mcp.server import MCPServer
from pydantic import ValidationError

from bus import InvalidInput, NotFound, TaskbusError

from ._mcp_results import error_result

logger = logging.getLogger(__name__)

Refused = Callable[[str, TaskbusError], Awaitable[None]]


def close_schemas(schema: dict[str, Any]) -> None:
    """``additionalProperties: false`` on the schema and every object it defines."""
    if schema.get("type") == "object" or "properties" in schema:
        schema.setdefault("additionalProperties", False)
    for sub in (schema.get("$defs") or {}).values():
        close_schemas(sub)


def unknown_argument(name: str, valid: list[str]) -> InvalidInput:
    near = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    hint = f"; did you mean `{near[0]}`?" if near else ""
    return InvalidInput(f"unknown argument `{name[:100]}`{hint} Valid arguments: {', '.join(sorted(valid))}.", field=name[:100])


def _where(loc: tuple[Any, ...]) -> str:
    return ".".join(str(part) for part in loc) or "arguments"


def check_arguments(schema: dict[str, Any], validate: Callable[[dict[str, Any]], Any], arguments: dict[str, Any]) -> None:
    """Raise ``InvalidInput`` naming the first unknown or invalid argument."""
    valid = list((schema.get("properties") or {}).keys())
    for name in arguments:
        if name not in valid:
            raise unknown_argument(str(name), valid)
    try:
        validate(arguments)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        first = errors[0]
        where = _where(first["loc"])
        more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
        if first["type"] == "extra_forbidden":
            raise InvalidInput(f"unknown field `{where}`{more}; fix it and call again", field=where) from None
        raise InvalidInput(f"argument `{where}`: {first['msg']}{more}; fix it and call again", field=where) from None


class StrictMCPServer(MCPServer):
    """``MCPServer`` whose tools refuse unknown or invalid arguments in taskbus's error shape.

    ``on_refused(tool, error)`` is awaited for every refusal made here (for the audit log).
    """

    on_refused: Refused | None = None

    def close_tool_schemas(self) -> None:
        for tool in self._tool_manager.list_tools():
            close_schemas(tool.parameters)

    async def call_tool(self, name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        tool = self._tool_manager.get_tool(name)
        try:
            if tool is None:
                tools = [t.name for t in self._tool_manager.list_tools()]
                near = difflib.get_close_matches(name, tools, n=1)
                hint = f" Did you mean `{near[0]}`?" if near else ""
                raise NotFound(f"no tool `{name[:100]}`.{hint} Tools: {', '.join(sorted(tools))}.")
            meta = tool.fn_metadata
            check_arguments(tool.parameters, lambda a: meta.arg_model.model_validate(meta.pre_parse_json(a)), arguments)
        except TaskbusError as exc:
            if self.on_refused is not None:
                await self.on_refused(name, exc)
            return error_result(exc)
        return await super().call_tool(name, arguments, context)
