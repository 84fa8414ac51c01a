"""Config for the test MCP server (tests/mcp_server.py) and what the tests read back."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from wsclient import ChatClient

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


Event = dict[str, Any]


async def until(chat: ChatClient, pred: Callable[[Event], bool], timeout: float = 10) -> Event:
    """The first event matching ``pred`` (the others are dropped)."""
    while True:
        event = await chat.next_event(timeout)
        if event.get("type") == "_closed":
            raise ConnectionError(event)
        if pred(event):
            return event


def message(role: str, contains: str = "") -> Callable[[Event], bool]:
    return lambda e: e.get("type") == "message" and e["role"] == role and contains in e["text"]


def tool_results(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "tool"]


def offered(body: dict[str, Any]) -> list[str]:
    return sorted(t["function"]["name"] for t in body.get("tools") or [])


def is_gone(pid: int) -> bool:
    """Dead, or a zombie waiting for a reaper (no longer running either way)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")
