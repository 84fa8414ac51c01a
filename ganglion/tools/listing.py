"""What ``/tools`` shows: the tools the model may use in a conversation, as plain rows.

Place in the flow: the composition root's ``/tools`` command -> ``tool_rows`` (the turn's
own offer: built-ins and MCP tools the policy lets through, with their policy and, for an
MCP tool, its server and state; then every MCP server not connected) -> ``render_rows``.
The rows are plain data so that another view (a settings page) can show the same list.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ganglion.tool_names import MCP_SEPARATOR
from ganglion.tools.mcp.manager import ServerState
from ganglion.tools.policy import ToolRunner


@dataclass(frozen=True, slots=True)
class ToolRow:
    name: str
    """The name the model calls it by (``<server>__*`` for a server that offers none now)."""
    mode: str
    """on / ask / off (tools.policy, or the default)."""
    server: str = ""
    """The MCP server it comes from; "" for a built-in tool."""
    state: str = ""
    """The server's state: connected, starting, or down with why and the next try."""


def tool_rows(runner: ToolRunner, servers: Sequence[ServerState], *,
              can_ask: bool) -> list[ToolRow]:
    """The offer of a turn in this conversation, then the servers whose tools are missing."""
    server_of = {tool: s for s in servers for tool in s.tools}
    rows = []
    for name in sorted(runner.offered(can_ask=can_ask)):
        s = server_of.get(name)
        rows.append(ToolRow(name, runner.policy.mode(name), s.name if s else "",
                            s.shown() if s else ""))
    for s in servers:
        if s.state != "connected":
            pattern = f"{s.name}{MCP_SEPARATOR}*"
            rows.append(ToolRow(pattern, runner.policy.mode(pattern), s.name, s.shown()))
    return rows


def render_rows(rows: Sequence[ToolRow]) -> str:
    """``/tools``'s answer in Markdown."""
    if not rows:
        return "The assistant has no tools in this conversation (tools.policy)."
    lines = ["Tools the assistant may use here (on: used freely; ask: you approve each "
             "call):"]
    for row in rows:
        line = f"- `{row.name}`: {row.mode}"
        if row.server:
            line += f", MCP server `{row.server}`, {row.state}"
        lines.append(line)
    return "\n".join(lines)
