"""The tool registry: tools by name, their schemas for the prompt; calls never crash a turn."""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from ganglion.errors import BadArguments, ToolError
from ganglion.messages import ThreadId
from ganglion.tools.arguments import (
    Validate,
    arguments_model,
    decode,
    param_docs,
    schema_of,
    validator,
)

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Who a tool runs for. A tool asks for it by having a parameter named ``ctx``."""

    thread_id: ThreadId
    sender: str


ToolFunc = Callable[..., Awaitable[str]]


@dataclass(frozen=True)
class Tool:
    """A tool as the model sees it (``parameters``, a JSON schema) and as the registry runs it.

    ``validate`` turns the decoded arguments into ``func``'s keyword arguments or raises a
    ToolError saying what to send instead. A typed function gets both from its signature
    (``tool_from_function``); a tool whose schema comes from elsewhere (an MCP server) can
    bring its own schema and validator.
    """

    name: str
    description: str
    parameters: dict[str, Any]
    validate: Validate
    func: ToolFunc
    wants_ctx: bool = False
    """``func`` takes the ToolContext as ``ctx``."""

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


def tool_from_function(func: ToolFunc, name: str | None = None) -> Tool:
    """Build a Tool from an async function with annotated parameters and a docstring: the
    schema and the check of a call come from one pydantic model of its parameters."""
    if not inspect.iscoroutinefunction(func):
        raise TypeError(f"tool {func.__name__} must be an async function")
    doc = inspect.getdoc(func)
    if not doc:
        raise TypeError(f"tool {func.__name__} needs a docstring: the model reads it")
    description, docs = param_docs(doc)
    model = arguments_model(func, docs)
    wants_ctx = "ctx" in inspect.signature(func).parameters
    return Tool(name or func.__name__, description, schema_of(model), validator(model), func,
                wants_ctx)


@dataclass(frozen=True, slots=True)
class ToolOutcome:
    """The text for the model, and whether it is an error result."""

    text: str
    ok: bool
    seconds: float
    from_tool: bool = True
    """The text is what the tool returned or raised (untrusted: it may carry file contents,
    command output, a page); False for the registry's own word on a malformed call."""


class ToolRegistry:
    """Tools by name. ``call`` turns every failure into an error result for the model."""

    def __init__(self) -> None:
        self._tools: dict[str, Tool] = {}
        self.revision = 0
        """Counts the changes to the set (tools added, withdrawn): what was derived from it
        (a turn's offer) is stale once it changes."""

    def add(self, func: ToolFunc, name: str | None = None) -> Tool:
        """Register a typed async function (see ``tool_from_function``)."""
        return self.add_tool(tool_from_function(func, name))

    def add_tool(self, tool: Tool) -> Tool:
        """Register a Tool built elsewhere (its own schema and validator)."""
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name} registered twice")
        self._tools[tool.name] = tool
        self.revision += 1
        return tool

    def remove(self, names: Iterable[str]) -> None:
        """Withdraw tools (an MCP server's, when it goes down or lists others)."""
        gone = [n for n in names if self._tools.pop(n, None) is not None]
        if gone:
            self.revision += 1

    def names(self) -> list[str]:
        return list(self._tools)

    def schemas(self, allowed: set[str] | None = None) -> list[dict[str, Any]]:
        return [t.schema() for n, t in self._tools.items() if allowed is None or n in allowed]

    def valid(self, name: str, arguments: str, ctx: ToolContext) -> bool:
        """Whether ``call`` would run the tool (the same preparation, without running it): a
        call put up for a person's approval is checked first, so nobody approves a call
        that fails; ``call`` then gives the model the error of one that is not valid."""
        try:
            self._prepare(name, arguments, ctx)
        except ToolError:
            return False
        return True

    async def call(self, name: str, arguments: str, ctx: ToolContext) -> ToolOutcome:
        started = time.monotonic()
        try:
            tool, args = self._prepare(name, arguments, ctx)
        except ToolError as err:
            return ToolOutcome(f"error: {err}", False, time.monotonic() - started,
                               from_tool=False)
        try:
            text = await tool.func(**args)
            ok = True
        except asyncio.CancelledError:
            raise
        except BadArguments as err:  # the tool's own check of its arguments: guidance
            return ToolOutcome(f"error: {err}", False, time.monotonic() - started,
                               from_tool=False)
        except ToolError as err:
            text, ok = f"error: {err}", False
        except Exception as err:  # a tool's bug must not end the turn
            log.exception("[%s] tool %s raised", ctx.thread_id, name)
            text, ok = f"error: the tool failed: {type(err).__name__}: {err}", False
        return ToolOutcome(text, ok, time.monotonic() - started)

    def _prepare(self, name: str, arguments: str, ctx: ToolContext) -> tuple[Tool, dict[str, Any]]:
        """The tool and its checked keyword arguments, or a ToolError saying what to fix."""
        tool = self._tools.get(name)
        if tool is None:
            available = ", ".join(self._tools) or "none"
            raise ToolError(f"no tool named {name!r}; available: {available}")
        args = tool.validate(decode(arguments))
        if tool.wants_ctx:
            args["ctx"] = ctx
        return tool, args
