"""The names of the built-in tools: a leaf module, so the config can check them.

Place in the flow: ``ganglion.config`` checks ``tools.policy`` against these names while the
file is read (so ``check-config`` and the daemon refuse a typo alike, with exit status 2),
and the composition root checks at start that the registry holds exactly these tools.

Why here, outside ``ganglion/tools/``: the tools import the config (its types), so the
config must not import the tools package; it imports this module, which imports nothing.
Passing the names into validation from the composition root instead would make every
caller of ``parse_config`` supply them, and one that forgot would accept a misspelt tool,
leaving it ``on``.
"""

from __future__ import annotations

import re

TOOL_NAMES: frozenset[str] = frozenset({
    # ganglion/tools/memory.py
    "memory_read", "memory_append", "memory_replace", "memory_rewrite",
    # ganglion/tools/files.py
    "read_file", "write_file", "list_dir", "edit_file",
    # ganglion/tools/shell.py
    "shell",
    # ganglion/tools/reminders.py
    "set_reminder", "list_reminders", "cancel_reminder",
    # ganglion/tools/web.py, web_search.py (web_search only when tools.web.search_url is set)
    "web_fetch", "web_search",
})
"""Every built-in tool ``App`` registers; adding one means adding its name here. MCP tools
(below) come and go with their servers: ``mcp_server_of`` tells them apart."""

# -- MCP tools: dynamic, named <server>__<tool> --------------------------------------------

MCP_SEPARATOR = "__"
"""Between an MCP server's name and its tool's: ``notes__search``."""
MAX_TOOL_NAME = 64
"""The longest tool name the OpenAI-compatible APIs accept (and ``^[a-zA-Z0-9_-]+$``)."""
SERVER_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
"""An MCP server's name in ``mcp.servers`` (and without ``__``, so a name splits one way)."""
_TOOL_PART = re.compile(r"[A-Za-z0-9_-]+|\*")


def is_server_name(name: str) -> bool:
    return bool(SERVER_NAME.fullmatch(name)) and MCP_SEPARATOR not in name and len(name) <= 32


def mcp_server_of(name: str) -> str | None:
    """The server of an MCP tool name or policy pattern (``notes__search``, ``notes__*``),
    or None when ``name`` is not one."""
    server, sep, tool = name.partition(MCP_SEPARATOR)
    if not sep or not is_server_name(server) or not _TOOL_PART.fullmatch(tool):
        return None
    return server
