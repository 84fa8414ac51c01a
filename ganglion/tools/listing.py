"""What ``/tools`` shows: the tools the model may use in a conversation, as plain rows.

Place in the flow: the composition root's ``/tools`` command -> ``tool_rows`` (the turn's
own offer: built-ins and MCP tools the policy lets through, with their policy and, for an
MCP tool, its server and state; then every MCP server not connected) -> ``render_rows``.
The rows are plain data so that another view (a settings page) can show the same list.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ganglion.commands import CommandTable
from ganglion.messages import Inbound
from ganglion.tool_names import MCP_SEPARATOR
from ganglion.tools.policy import ToolRunner

if TYPE_CHECKING:  # the MCP side is loaded only when servers are configured
    from ganglion.tools.mcp.manager import ServerState


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


class ToolsCommand:
    """``/tools``: the rows for the sender's conversation, secrets masked (a server's last
    words, shown as why it is down, might hold one)."""

    def __init__(self, runner: ToolRunner, servers: Callable[[], Sequence[ServerState]],
                 secrets: Sequence[str]) -> None:
        self.runner = runner
        self.servers = servers
        self.secrets = [s for s in secrets if s]

    def register(self, commands: CommandTable) -> None:
        commands.add("tools", "/tools", "the tools the assistant may use here, their policy "
                     "and, for MCP servers, their state", self._cmd_tools)

    async def _cmd_tools(self, msg: Inbound, args: str) -> str:
        text = render_rows(tool_rows(self.runner, self.servers(), can_ask=not msg.system))
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text
