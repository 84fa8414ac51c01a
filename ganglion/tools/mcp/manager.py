"""The MCP servers of the config: started in the background, their state, their stop.

Place in the flow: ``App`` builds ``McpTools`` when ``mcp.servers`` is not empty and starts
it before the bus; ``start`` only creates a task, which imports the SDK in a thread (it
takes a while, and the daemon must be ready at once) and runs one ``ServerSupervisor`` per
server (``server.py``). Each registers its server's tools in the ToolRegistry when
connected and withdraws them when down; ``states`` feeds ``/tools`` and ``down_note`` the
prompt. Stopped after the bus (no turn calls a tool any more), within the stop budget.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ganglion.config_mcp import McpServerConfig
from ganglion.tools.registry import ToolRegistry

if TYPE_CHECKING:
    from ganglion.tools.mcp.server import ServerSupervisor

log = logging.getLogger(__name__)

State = Literal["starting", "connected", "down"]


@dataclass
class ServerState:
    """What ``/tools`` says of one server (secrets never: its name and transport only)."""

    name: str
    transport: Literal["stdio", "http"]
    state: State = "starting"
    why: str = ""
    """Why it is down (or why it last went down), in words."""
    retry_at: float | None = None
    """When (monotonic) the next attempt starts, while down."""
    tools: dict[str, str] = field(default_factory=dict)
    """Its tools in the registry: the model's name -> the server's own."""

    def shown(self) -> str:
        """``connected``, ``starting``, or ``down: why (next try in 8 s)``."""
        if self.state != "down":
            return self.state
        text = f"down: {self.why}" if self.why else "down"
        if self.retry_at is not None:
            wait = max(self.retry_at - time.monotonic(), 0.0)
            text += f" (next try in {wait:.0f} s)"
        return text


@dataclass(frozen=True, slots=True)
class Limits:
    """What every server's calls and restarts get."""

    call_seconds: float
    max_output_bytes: int
    connect_seconds: float = 30.0
    """To start, initialise and list the tools; then the server counts as down."""
    first_backoff_seconds: float = 1.0
    max_backoff_seconds: float = 300.0
    healthy_seconds: float = 60.0
    """Connected this long, a server's next failure starts the backoff again from the first."""


class McpTools:
    """Every configured MCP server, supervised in the background."""

    def __init__(self, servers: Mapping[str, McpServerConfig], registry: ToolRegistry,
                 limits: Limits, *, environ: Mapping[str, str], run_dir: Path,
                 cwd: Path) -> None:
        self.servers = {name: cfg for name, cfg in servers.items() if cfg.enabled}
        self.registry = registry
        self.limits = limits
        self.environ = environ
        """The daemon's environment: the variables a stdio server's ``env`` names come from."""
        self.run_dir = run_dir
        """Each stdio server's pid and stderr files (its process group, why it stopped)."""
        self.cwd = cwd
        self._states = {name: ServerState(name, "stdio" if cfg.command else "http")
                        for name, cfg in self.servers.items()}
        self._supervisors: list[ServerSupervisor] = []
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="mcp")

    async def _run(self) -> None:
        started = time.monotonic()
        # The SDK (pydantic models, httpx, anyio) takes a good part of a second to import.
        module = await asyncio.to_thread(importlib.import_module, "ganglion.tools.mcp.server")
        log.debug("MCP SDK imported in %.2f s", time.monotonic() - started)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for name, cfg in self.servers.items():
            supervisor: ServerSupervisor = module.ServerSupervisor(self, self._states[name], cfg)
            self._supervisors.append(supervisor)
            supervisor.start()

    async def stop(self) -> None:
        """Every server stopped at once (stdio ones: their whole process group)."""
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await asyncio.gather(*(s.stop() for s in self._supervisors))

    def states(self) -> list[ServerState]:
        return list(self._states.values())

    def state_of(self, tool: str) -> ServerState | None:
        """The server a registered tool belongs to."""
        return next((s for s in self._states.values() if tool in s.tools), None)

    def down_note(self) -> str:
        """For the prompt: the servers whose tools are missing now (the text changes only
        when that set does, so the prompt's cached head stays the same otherwise)."""
        down = sorted(s.name for s in self._states.values() if s.state != "connected")
        if not down:
            return ""
        return (f"These tool servers are not available now, so their tools are missing: "
                f"{', '.join(down)}. If the user asks for something they provide, say so.")
