"""One MCP server, supervised: connect, offer its tools, call them, restart it when it fails.

Place in the flow: ``McpTools`` (manager.py) runs one ``ServerSupervisor`` per server. Its
task owns the connection (the SDK's transports and session are anyio contexts: entered and
left in that one task), registers the server's tools as ``<server>__<tool>`` when connected,
lists them again on ``notifications/tools/list_changed``, and withdraws them when the
connection ends; then it waits (doubling, capped) and starts again. The turns' calls go
through ``call`` from their own tasks.

A stdio server is started through ``/bin/sh`` writing its pid before ``exec``: the SDK starts
it in a process group of its own but does not say which, and ends only the server itself
when it exits on its own; knowing the group, the supervisor ends whatever the server left
behind, and the whole group within the daemon's stop budget.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import time
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
import httpx2
import mcp_types as types
from mcp.client.session import ClientSession, IncomingMessage
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

from ganglion.config_mcp import McpServerConfig
from ganglion.errors import ToolError
from ganglion.tools.mcp.manager import McpTools, ServerState
from ganglion.tools.mcp.translate import arguments_check, input_schema, result_text, tool_name
from ganglion.tools.registry import Tool
from ganglion.tools.shell import shell_environment

log = logging.getLogger(__name__)

STOP_GRACE_SECONDS = 1.0
"""After the SDK closed a stdio server's stdin (the spec's way to stop it), how long it may
take before its group gets SIGTERM; SIGKILL as long again later. Both within app.STOP_SECONDS."""
_LAUNCH = 'echo $$ > "$0" && exec "$@"'
"""The shell writes its pid (the group's id: the SDK starts a new session), then becomes the
server."""


class ServerDown(Exception):
    """The connection ended; ``str`` says why."""


class ServerSupervisor:
    """Keeps one server connected while the daemon runs."""

    def __init__(self, manager: McpTools, state: ServerState, cfg: McpServerConfig) -> None:
        self.m = manager
        self.state = state
        self.cfg = cfg
        self.name = state.name
        self._session: ClientSession | None = None
        self._relist = asyncio.Event()
        self._stopping = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._connected_at: float | None = None
        """When (monotonic) the current or last connection was made; None before one."""
        self._pid_file = manager.run_dir / f"{self.name}.pid"
        self._stderr_file = manager.run_dir / f"{self.name}.stderr"
        # Left by a daemon that was killed: that group is not ours to end (its id may be
        # another process's by now).
        self._pid_file.unlink(missing_ok=True)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=f"mcp-{self.name}")

    async def stop(self) -> None:
        """Close the session (a stdio server's stdin), then end its process group."""
        self._stopping.set()
        task = self._task
        if task is not None:
            done, _ = await asyncio.wait({task}, timeout=STOP_GRACE_SECONDS)
            if not done:
                self._signal_group(signal.SIGTERM)
                done, _ = await asyncio.wait({task}, timeout=STOP_GRACE_SECONDS)
            if not done:
                self._signal_group(signal.SIGKILL)
                task.cancel()
                await asyncio.gather(task, return_exceptions=True)
        await self._end_group(STOP_GRACE_SECONDS)
        self._withdraw()

    # -- the supervisor's task -------------------------------------------------------------

    async def _run(self) -> None:
        backoff = self.m.limits.first_backoff_seconds
        while not self._stopping.is_set():
            self.state.state, self.state.retry_at = "starting", None
            self._connected_at = None
            try:
                await self._connect_and_serve()
                why = "stopped"
            except asyncio.CancelledError:
                raise
            except Exception as err:  # whatever the server or the SDK raised: retried
                why = _reason(err) or type(err).__name__
                if not isinstance(err, ServerDown):
                    log.debug("MCP server %s failed", self.name, exc_info=True)
            finally:
                self._session = None
                self._withdraw()
            await self._end_group(STOP_GRACE_SECONDS)
            if self._stopping.is_set():
                break
            stderr = self._stderr_tail()
            why = f"{why}; its last words: {stderr}" if stderr else why
            if self._was_healthy():
                backoff = self.m.limits.first_backoff_seconds
            self.state.state, self.state.why = "down", why
            self.state.retry_at = time.monotonic() + backoff
            log.warning("MCP server %s is down (%s); its tools are withdrawn; next try in "
                        "%.0f s", self.name, why, backoff)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(backoff):
                    await self._stopping.wait()
            backoff = min(backoff * 2, self.m.limits.max_backoff_seconds)

    def _was_healthy(self) -> bool:
        """The connection that ended lasted long enough to start the backoff afresh."""
        since = self._connected_at
        return since is not None and time.monotonic() - since >= self.m.limits.healthy_seconds

    async def _connect_and_serve(self) -> None:
        """Connect, list the tools, serve until the connection ends (ServerDown) or stop."""
        async with AsyncExitStack() as stack:
            read, write = await stack.enter_async_context(self._transport())
            # A relay between the transport and the session: the end of the server's
            # output (it exited) is the end of this connection.
            ended = anyio.Event()
            relay_send, relay_read = anyio.create_memory_object_stream[Any](0)
            group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(group.cancel_scope.cancel)

            async def relay() -> None:
                async with relay_send:
                    async for item in read:
                        await relay_send.send(item)
                ended.set()

            group.start_soon(relay)
            session = await stack.enter_async_context(
                ClientSession(relay_read, write, message_handler=self._on_message))
            async with asyncio.timeout(self.m.limits.connect_seconds):
                await session.initialize()
                await self._list(session)
            self._session = session
            self._connected_at = time.monotonic()
            self.state.state, self.state.why = "connected", ""
            log.info("MCP server %s connected: %d tools", self.name, len(self.state.tools))
            while True:
                waits = {asyncio.ensure_future(e.wait())
                         for e in (self._relist, self._stopping)} | {
                    asyncio.ensure_future(ended.wait())}
                try:
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for w in waits:
                        w.cancel()
                if self._stopping.is_set():
                    return
                if ended.is_set():
                    raise ServerDown(self._exit_reason())
                self._relist.clear()
                async with asyncio.timeout(self.m.limits.connect_seconds):
                    await self._list(session)
                log.info("MCP server %s changed its tools: %d now", self.name,
                         len(self.state.tools))

    def _transport(self) -> contextlib.AbstractAsyncContextManager[Any]:
        cfg = self.cfg
        if cfg.url is not None:
            client = httpx2.AsyncClient(headers=dict(cfg.headers), timeout=httpx2.Timeout(
                self.m.limits.connect_seconds, read=self.m.limits.call_seconds + 5))
            return streamable_http_client(cfg.url, http_client=client)
        command = cfg.command or ""
        cwd = self.m.cwd / cfg.cwd if cfg.cwd else self.m.cwd
        env = self._environment(cwd)
        found = shutil.which(command, path=env.get("PATH"))
        if found is None:
            raise ServerDown(f"command not found: {command!r} (PATH={env.get('PATH')})")
        self._pid_file.unlink(missing_ok=True)
        errlog = self._stderr_file.open("w", encoding="utf-8")  # the server's stderr
        params = StdioServerParameters(
            command="/bin/sh", args=["-c", _LAUNCH, str(self._pid_file), found, *cfg.args],
            env=env, cwd=cwd)

        @contextlib.asynccontextmanager
        async def stdio() -> Any:
            try:
                async with stdio_client(params, errlog=errlog) as streams:
                    yield streams
            finally:
                errlog.close()

        return stdio()

    def _environment(self, cwd: Path) -> dict[str, str]:
        """As the shell's: PATH, HOME, LANG and the like, and what ``env`` names or gives."""
        env = self.cfg.env
        names = env if isinstance(env, list) else []
        out = shell_environment(self.m.environ, names, (), cwd)
        if isinstance(env, dict):
            out.update(env)
        return out

    async def _on_message(self, message: IncomingMessage) -> None:
        if isinstance(message, types.ToolListChangedNotification):
            self._relist.set()
        elif isinstance(message, Exception):
            # Not the end by itself: the transport closes the stream when it is over.
            log.warning("MCP server %s: transport error: %s", self.name, message)

    async def _list(self, session: ClientSession) -> None:
        """Register the server's tools (all pages), replacing those it offered before."""
        listed: list[types.Tool] = []
        cursor: str | None = None
        for _page in range(100):
            result = await session.list_tools(
                params=types.PaginatedRequestParams(cursor=cursor) if cursor else None)
            listed += result.tools
            cursor = result.next_cursor
            if not cursor:
                break
        self._withdraw()
        taken = set(self.m.registry.names())
        for tool in listed:
            name = tool_name(self.name, tool.name, taken)
            taken.add(name)
            schema = input_schema(tool)
            description = (tool.description or tool.title or tool.name).strip()
            self.m.registry.add_tool(Tool(
                name, f"[{self.name}] {description}", schema, arguments_check(schema),
                self._caller(tool.name)))
            self.state.tools[name] = tool.name

    def _withdraw(self) -> None:
        self.m.registry.remove(self.state.tools)
        self.state.tools = {}

    # -- calls, from the turns' tasks ------------------------------------------------------

    def _caller(self, tool: str) -> Any:
        async def call(arguments: dict[str, Any]) -> str:
            return await self.call(tool, arguments)
        return call

    async def call(self, tool: str, arguments: dict[str, Any]) -> str:
        session = self._session
        if session is None:
            raise ToolError(f"the MCP server {self.name} is not connected now: "
                            f"{self.state.shown()}")
        limit = self.m.limits.call_seconds
        try:
            async with asyncio.timeout(limit + 1):  # the SDK's own time-out comes first
                result = await session.call_tool(tool, arguments, read_timeout_seconds=limit)
        except TimeoutError:
            raise ToolError(f"no answer from the MCP server {self.name} within {limit:g} s "
                            "(tools.mcp_timeout_seconds)") from None
        except MCPError as err:
            if err.code == types.REQUEST_TIMEOUT:
                raise ToolError(f"no answer from the MCP server {self.name} within "
                                f"{limit:g} s (tools.mcp_timeout_seconds)") from None
            if err.code == types.CONNECTION_CLOSED:
                raise ToolError(f"the MCP server {self.name} stopped during the call; it is "
                                "being restarted. The call may or may not have had its "
                                "effect") from None
            raise ToolError(f"the MCP server {self.name} refused the call: {err.message}"
                            ) from None
        text = result_text(result, self.m.limits.max_output_bytes)
        if result.is_error:
            raise ToolError(text)
        return text

    # -- the stdio server's process group --------------------------------------------------

    def _group(self) -> int | None:
        try:
            return int(self._pid_file.read_text().strip())
        except (OSError, ValueError):
            return None

    def _signal_group(self, sig: signal.Signals) -> bool:
        """Send ``sig`` to the server's process group; False when none is left."""
        group = self._group()
        if group is None or group <= 1:
            return False
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return False
        except PermissionError:  # not ours any more (the id was reused): leave it be
            return False
        return True

    async def _end_group(self, grace: float) -> None:
        """What the server left behind (its children) gets SIGTERM, then SIGKILL."""
        if not self._signal_group(signal.SIGTERM):
            self._pid_file.unlink(missing_ok=True)
            return
        deadline = time.monotonic() + grace
        # Nothing to await on another process group's end: look every 20 ms.
        while self._signal_group(signal.Signals(0)) and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if self._signal_group(signal.SIGKILL):
            log.warning("MCP server %s: its process group ignored SIGTERM; killed", self.name)
        self._pid_file.unlink(missing_ok=True)

    def _exit_reason(self) -> str:
        return "the server closed the connection" if self.cfg.url else "the server exited"

    def _stderr_tail(self) -> str:
        if self.cfg.url is not None:
            return ""
        try:
            with self._stderr_file.open("rb") as f:
                f.seek(max(f.seek(0, os.SEEK_END) - 300, 0))
                tail = f.read().decode(errors="replace")
        except OSError:
            return ""
        lines = [line.strip() for line in tail.strip().splitlines() if line.strip()]
        return " / ".join(lines[-3:])[-240:]


def _reason(err: BaseException) -> str:
    """An exception in words; a group of them (anyio's) by its first."""
    if isinstance(err, BaseExceptionGroup) and err.exceptions:
        return _reason(err.exceptions[0])
    if isinstance(err, TimeoutError):
        return "no answer while connecting"
    if isinstance(err, httpx2.HTTPError):
        return f"{type(err).__name__}: {err}"
    return str(err) or type(err).__name__
