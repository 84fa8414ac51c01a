"""The tool registry: schemas from typed, documented async functions; calls never crash a turn."""

from __future__ import annotations

import asyncio
import inspect
import json
import logging
import time
import types
import typing
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_origin

from ganglion.errors import ToolError
from ganglion.messages import ThreadId

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class ToolContext:
    """Who a tool runs for. A tool asks for it by having a parameter named ``ctx``."""

    thread_id: ThreadId
    sender: str


ToolFunc = Callable[..., Awaitable[str]]


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    func: ToolFunc
    wants_ctx: bool

    def schema(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


_JSON_TYPES: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


def _json_type(annotation: Any) -> dict[str, Any]:
    origin = get_origin(annotation)
    if origin is Literal:
        values = list(get_args(annotation))
        return {"type": _JSON_TYPES[type(values[0])], "enum": values}
    if origin in (list, typing.List):  # noqa: UP006
        (item,) = get_args(annotation) or (str,)
        return {"type": "array", "items": _json_type(item)}
    if origin in (types.UnionType, typing.Union):
        inner = [a for a in get_args(annotation) if a is not type(None)]
        if len(inner) == 1:
            return _json_type(inner[0])
    if annotation in _JSON_TYPES:
        return {"type": _JSON_TYPES[annotation]}
    raise TypeError(f"unsupported tool parameter type: {annotation!r}")


def _param_docs(doc: str) -> tuple[str, dict[str, str]]:
    """Split a docstring into its description and ``name: text`` lines under ``Args:``."""
    description, _, args = doc.partition("Args:")
    params: dict[str, str] = {}
    current = ""
    for line in args.splitlines():
        stripped = line.strip()
        name, sep, text = stripped.partition(":")
        is_param = line.startswith(" " * 4) and not line.startswith(" " * 9)
        if sep and name.isidentifier() and is_param:
            current = name
            params[current] = text.strip()
        elif current and stripped:
            params[current] += " " + stripped
    return " ".join(description.split()), params


def tool_from_function(func: ToolFunc, name: str | None = None) -> Tool:
    """Build a Tool from an async function with annotated parameters and a docstring."""
    if not inspect.iscoroutinefunction(func):
        raise TypeError(f"tool {func.__name__} must be an async function")
    doc = inspect.getdoc(func)
    if not doc:
        raise TypeError(f"tool {func.__name__} needs a docstring: the model reads it")
    description, param_docs = _param_docs(doc)
    hints = typing.get_type_hints(func)
    properties: dict[str, Any] = {}
    required: list[str] = []
    wants_ctx = False
    for pname, param in inspect.signature(func).parameters.items():
        if pname == "ctx":
            wants_ctx = True
            continue
        prop = _json_type(hints[pname])
        if pname in param_docs:
            prop["description"] = param_docs[pname]
        if param.default is inspect.Parameter.empty:
            required.append(pname)
        else:
            prop["default"] = param.default
        properties[pname] = prop
    parameters = {
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }
    return Tool(name or func.__name__, description, parameters, func, wants_ctx)


def _check_args(tool: Tool, args: dict[str, Any]) -> None:
    props: dict[str, Any] = tool.parameters["properties"]
    unknown = sorted(set(args) - set(props))
    if unknown:
        raise ToolError(f"unknown argument(s) {', '.join(unknown)}; expected: {', '.join(props)}")
    missing = [p for p in tool.parameters["required"] if p not in args]
    if missing:
        raise ToolError(f"missing required argument(s): {', '.join(missing)}")
    checks: dict[str, tuple[type, ...]] = {
        "string": (str,), "integer": (int,), "number": (int, float), "boolean": (bool,),
        "array": (list,),
    }
    for key, value in args.items():
        expected = props[key]["type"]
        ok = isinstance(value, checks[expected]) and not (
            expected in ("integer", "number") and isinstance(value, bool)
        )
        if not ok:
            article = "an" if expected[0] in "aeiou" else "a"
            raise ToolError(f"argument {key} must be {article} {expected}, "
                            f"got {type(value).__name__}")
        if "enum" in props[key] and value not in props[key]["enum"]:
            raise ToolError(f"argument {key} must be one of {props[key]['enum']}")


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

    def add(self, func: ToolFunc, name: str | None = None) -> Tool:
        tool = tool_from_function(func, name)
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name} registered twice")
        self._tools[tool.name] = tool
        return tool

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
        try:
            args = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError as err:
            raise ToolError(f"arguments are not valid JSON ({err.msg} at {err.pos}); "
                            "send a JSON object matching the tool's schema") from None
        if not isinstance(args, dict):
            raise ToolError("arguments must be a JSON object")
        # Models often send null for an optional argument they mean to leave out.
        optional = set(tool.parameters["properties"]) - set(tool.parameters["required"])
        args = {k: v for k, v in args.items() if not (v is None and k in optional)}
        _check_args(tool, args)
        if tool.wants_ctx:
            args["ctx"] = ctx
        return tool, args
