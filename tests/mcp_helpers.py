"""Config for the test MCP server (tests/mcp_server.py) and what the tests read back."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

SERVER = str(Path(__file__).resolve().parent / "mcp_server.py")
START_SECONDS = 30
"""A stdio server is a Python child importing the SDK: a few seconds on a busy machine."""


def stdio_server(**extra: Any) -> dict[str, Any]:
    """``mcp.servers.<name>`` running the test server over stdio; MCP_CALL_LOG passed by name."""
    return {"command": sys.executable, "args": [SERVER], "env": ["MCP_CALL_LOG"], **extra}


def mcp_config(servers: dict[str, Any], policy: dict[str, str] | None = None,
               **tools: Any) -> dict[str, Any]:
    return {"mcp": {"servers": servers}, "tools": {"policy": policy or {}, **tools}}


def calls(log: Path) -> list[dict[str, Any]]:
    """The calls the server(s) logged, in order."""
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]







def is_gone(pid: int) -> bool:
    """Dead, or a zombie waiting for a reaper (no longer running either way)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")
