"""The demo: a real MCP client submits ``run_task`` to a running stack and shows what happened.

It connects over Streamable HTTP with a short-lived key of the ``developer`` profile,
asks for a small program (the ``[script:demo]`` marker makes the offline scripted model
write and run one; a real model just reads it as text), prints every progress
notification as it arrives, then the result, the artifacts (read through the MCP
resource), the cost, and the task's rows in the audit log plus a verification of the
whole chain.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2
import mcp_types as types
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from audit import default_db_path, open_db, search, summarize, verify
from bus import Settings, TaskbusError

logger = logging.getLogger(__name__)

DEMO_WAIT_S = 300.0
"""How long the demo waits for its task; the task's own time limit is 30 s less."""
DEMO_TIMEOUT_S = int(DEMO_WAIT_S) - 30
DEMO_MAX_COST_USD = 1.0

DEMO_DESCRIPTION = (
    "[script:demo] Write a small Python program, primes.py, that prints the primes below 50; "
    "run it with python3 and tell me what it printed."
)


@dataclass(frozen=True, kw_only=True)
class DemoResult:
    task_id: str
    status: str
    cost_usd: float
    artifacts: int
    audit_rows: int
    audit_ok: bool

    @property
    def ok(self) -> bool:
        return self.status == "succeeded" and self.audit_ok and self.audit_rows > 0


async def run_demo(
    settings: Settings, mcp_url: str, key: str, *, console: Console, timeout_s: float = DEMO_WAIT_S, audit_timeout_s: float = 30.0
) -> DemoResult:
    """Run the demo task and report it on ``console``. Raises TaskbusError on a transport failure."""
    started = time.monotonic()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        if message:
            line = Text(f"  {time.monotonic() - started:5.1f}s  ", style="dim")
            line.append(message, style=_style(message))
            console.print(line, highlight=False)

    console.rule("[bold]demo: run_task over MCP (Streamable HTTP)")
    console.print(f"client: mcp Client -> {mcp_url} (Authorization: Bearer {key[:11]}...)", highlight=False)
    console.print(f"description: {DEMO_DESCRIPTION}", highlight=False, markup=False)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30.0, read=timeout_s)) as http:
        async with Client(streamable_http_client(mcp_url, http_client=http)) as client:
            async with asyncio.timeout(timeout_s):
                result = await client.call_tool(
                    "run_task",
                    {"description": DEMO_DESCRIPTION, "timeout_s": int(timeout_s) - 30, "max_cost_usd": DEMO_MAX_COST_USD},
                    progress_callback=on_progress,
                )
            doc: dict[str, Any] = result.structured_content or {}
            if not doc.get("task_id"):
                text = " ".join(c.text for c in result.content if isinstance(c, types.TextContent))
                raise TaskbusError(f"run_task was refused: {text}")
            task_id = doc["task_id"]
            _show_result(console, doc)
            for artifact in doc.get("artifacts", []):
                contents = (await client.read_resource(artifact["uri"])).contents[0]
                body = getattr(contents, "text", None)
                console.print(
                    f"\n[bold]artifact[/bold] {artifact['path']} ({artifact['size']} bytes, "
                    f"sha256 {artifact['sha256'][:12]}...) read via {artifact['uri']}",
                    highlight=False,
                )
                if body is not None:
                    console.print(Syntax(body, _lexer(artifact["path"]), line_numbers=False, word_wrap=True))
    rows, ok = await _audit(settings, task_id, console, timeout_s=audit_timeout_s)
    console.print(
        f"\n[bold]console[/bold] {mcp_url.rsplit('/mcp', 1)[0]}/console/tasks/{task_id}  (log in with the admin key)", highlight=False
    )
    return DemoResult(
        task_id=task_id,
        status=doc.get("status", "?"),
        cost_usd=float(doc.get("cost_usd") or 0.0),
        artifacts=len(doc.get("artifacts", [])),
        audit_rows=rows,
        audit_ok=ok,
    )


def _style(message: str) -> str:
    for prefix, style in (
        ("tool call", "magenta"),
        ("tool error", "red"),
        ("security", "bold red"),
        ("assistant", "cyan"),
        ("artifact", "green"),
        ("finished", "bold"),
        ("model call", "blue"),
    ):
        if message.startswith(prefix):
            return style
    return ""


def _lexer(path: str) -> str:
    return {"py": "python", "sh": "bash", "js": "javascript", "md": "markdown", "json": "json"}.get(path.rsplit(".", 1)[-1], "text")


def _show_result(console: Console, doc: dict[str, Any]) -> None:
    usage = doc.get("usage") or {}
    status = doc.get("status", "?")
    style = "green" if status == "succeeded" else "red"
    console.print(
        f"\n[bold]task[/bold] {doc['task_id']}  [bold {style}]{status}[/bold {style}]"
        f"{' (' + doc['reason'] + ')' if doc.get('reason') else ''}",
        highlight=False,
    )
    console.print(f"[bold]result[/bold] {doc.get('result', '')}", highlight=False)
    console.print(
        f"[bold]cost[/bold] ${float(doc.get('cost_usd') or 0):.4f} on {doc.get('model')} "
        f"({usage.get('input_tokens', 0)} input, {usage.get('output_tokens', 0)} output tokens; "
        f"{doc.get('turns', 0)} turns, {int(doc.get('duration_ms') or 0) / 1000:.1f}s)",
        highlight=False,
    )


async def _audit(settings: Settings, task_id: str, console: Console, *, timeout_s: float) -> tuple[int, bool]:
    """Wait until the audit writer has the task's ``finished`` row; show the rows; verify the chain."""
    db_path: Path = default_db_path(settings.data_path)
    console.rule("[bold]audit trail")
    rows: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        rows = await asyncio.to_thread(_search, db_path, task_id, open_db, search)
        if any(r["type"] == "finished" for r in rows):
            break
        await asyncio.sleep(0.2)
    else:
        console.print(
            f"[red]the audit log has no finished row for {task_id} after {timeout_s:.0f}s[/red] "
            f"(is `taskbus audit run` running? see logs/audit.log)"
        )
    console.print(f"$ taskbus audit search --task {task_id}", highlight=False, style="dim")
    table = Table("row", "seq", "type", "key", "what", box=None, pad_edge=False)
    for row in rows:
        table.add_row(str(row["id"]), str(row["seq"] or ""), row["type"], row["key_id"] or "", summarize(row, 90))
    console.print(table)
    result = await asyncio.to_thread(_verify, db_path, open_db, verify)
    console.print("$ taskbus audit verify", highlight=False, style="dim")
    if result.ok:
        console.print(f"[green]chain ok[/green]: {result.rows} rows, head {result.head_hash[:16]}...", highlight=False)
    else:
        console.print(f"[red]audit chain broken[/red]: {result.problem.message if result.problem else '?'}")
    return len(rows), bool(result.ok and rows)


def _verify(db_path: Path, open_db: Any, verify: Any) -> Any:
    conn = open_db(db_path, readonly=True)
    try:
        return verify(conn)
    finally:
        conn.close()


def _search(db_path: Path, task_id: str, open_db: Any, search: Any) -> list[dict[str, Any]]:
    try:
        conn = open_db(db_path, readonly=True)
    except TaskbusError:
        return []  # not created yet
    try:
        return search(conn, task=task_id, limit=500)
    except (TaskbusError, sqlite3.Error):
        return []
    finally:
        conn.close()


def connect_help(
    mcp_url: str, nats_url: str = "nats://127.0.0.1:4222", taskbus: str = "taskbus", data_dir: str = "", key_hint: str = "tb_..."
) -> str:
    """How to point other MCP clients at this stack (plain text for a terminal)."""
    data = f',\n              "TASKBUS_DATA_DIR": "{data_dir}"' if data_dir else ""
    return f"""Connect your own MCP client with the admin key printed at first start, or a key of its own
(taskbus keys create --profile developer --name my-ide):

  Claude Code:
    claude mcp add --transport http taskbus {mcp_url} --header "Authorization: Bearer {key_hint}"

  Cursor (.cursor/mcp.json) and other clients that take a URL:
    {{"mcpServers": {{"taskbus": {{"url": "{mcp_url}",
      "headers": {{"Authorization": "Bearer {key_hint}"}}}}}}}}

  Claude Desktop, or any client, over stdio (it starts `taskbus serve` itself; needs this NATS):
    {{"mcpServers": {{"taskbus": {{"command": "{taskbus}", "args": ["serve", "--transport", "stdio"],
      "env": {{"TASKBUS_API_KEY": "{key_hint}", "TASKBUS_NATS_URL": "{nats_url}"{data}}}}}}}}}

  More (Claude Desktop over HTTP via mcp-remote, Python): README.md, "Connecting MCP clients".
"""
