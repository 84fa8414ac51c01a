"""The registry on its own: arguments checked strictly against the pydantic model of the
function's signature, guidance for every malformed call, and tools with their own schema."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

import pytest
from conftest import AppFactory
from pydantic import BaseModel

from ganglion.errors import ToolError
from ganglion.messages import ThreadId
from ganglion.tools.registry import Tool, ToolContext, ToolRegistry

CTX = ToolContext(ThreadId("web_" + "0" * 32), "web")


def registry_with_plan(calls: list[dict[str, Any]]) -> ToolRegistry:
    async def plan(ctx: ToolContext, title: str, days: int, budget: float = 100.0,
                   tags: list[str] | None = None, pace: Literal["slow", "fast"] = "slow",
                   public: bool = False) -> str:
        """Plan a trip.

        Args:
            title: what to call it
        """
        calls.append({"ctx": ctx, "title": title, "days": days, "budget": budget,
                      "tags": tags, "pace": pace, "public": public})
        return "planned"

    async def ping() -> str:
        """Answer pong."""
        return "pong"

    registry = ToolRegistry()
    registry.add(plan)
    registry.add(ping)
    return registry


@pytest.mark.parametrize(("name", "args", "error"), [
    # strict: no "5" for 5, no true for 1, no 5.0 for 5
    ("plan", {"title": "x", "days": "5"}, "argument days must be an integer, got str"),
    ("plan", {"title": "x", "days": True}, "argument days must be an integer, got bool"),
    ("plan", {"title": "x", "days": 5.0}, "argument days must be an integer, got float"),
    ("plan", {"title": "x", "days": 1, "budget": "9"}, "argument budget must be a number"),
    ("plan", {"title": "x", "days": 1, "public": 1}, "argument public must be a boolean"),
    ("plan", {"title": None, "days": 1}, "argument title must be a string, got NoneType"),
    # each item of a list is checked, and named
    ("plan", {"title": "x", "days": 1, "tags": ["a", 2]},
     "argument tags[1] must be a string, got int"),
    ("plan", {"title": "x", "days": 1, "tags": "a"}, "argument tags must be an array, got str"),
    ("plan", {"title": "x", "days": 1, "pace": "run"}, "argument pace must be 'slow' or 'fast'"),
    ("plan", {"title": "x"}, "missing required argument(s): days"),
    ("plan", {"days": 1, "title": "x", "mode": "rb", "cwd": "/"},
     "unknown argument(s) cwd, mode; expected: title, days, budget, tags, pace, public"),
    ("ping", {"x": 1}, "unknown argument(s) x; expected: none (send {})"),
])
async def test_a_malformed_call_gets_guidance_and_the_tool_never_runs(
    name: str, args: dict[str, Any], error: str
) -> None:
    calls: list[dict[str, Any]] = []
    registry = registry_with_plan(calls)
    assert not registry.valid(name, json.dumps(args), CTX)
    outcome = await registry.call(name, json.dumps(args), CTX)
    assert not outcome.ok and not outcome.from_tool
    assert outcome.text == f"error: {error}" or outcome.text.startswith(f"error: {error},")
    assert calls == []


@pytest.mark.parametrize(("arguments", "error"), [
    ('{"title": "x"', "error: arguments are not valid JSON (Expecting ',' delimiter at 13); "
                      "send a JSON object matching the tool's schema"),
    ('["x", 1]', "error: arguments must be a JSON object"),
    ("5", "error: arguments must be a JSON object"),
])
async def test_arguments_that_are_not_a_json_object_get_guidance(
    arguments: str, error: str
) -> None:
    calls: list[dict[str, Any]] = []
    outcome = await registry_with_plan(calls).call("plan", arguments, CTX)
    assert (outcome.text, outcome.ok, calls) == (error, False, [])


async def test_a_good_call_runs_with_defaults_and_null_for_an_optional_argument() -> None:
    calls: list[dict[str, Any]] = []
    registry = registry_with_plan(calls)
    # null for an optional argument means "left out", even where null is no valid value
    outcome = await registry.call("plan", json.dumps(
        {"title": "Rome", "days": 3, "budget": 250, "public": None, "tags": ["a"]}), CTX)
    assert outcome.ok and outcome.text == "planned"
    assert calls == [{"ctx": CTX, "title": "Rome", "days": 3, "budget": 250.0, "tags": ["a"],
                      "pace": "slow", "public": False}]
    assert (await registry.call("ping", "", CTX)).text == "pong"  # no arguments: "" is {}


async def test_a_tool_with_its_own_schema_is_offered_and_checked_by_its_own_validator() -> None:
    # The seam for tools whose schema comes from elsewhere (an MCP server): the registry
    # offers the schema as given and runs the tool's validator before the call.
    ran: list[Mapping[str, Any]] = []
    parameters = {"type": "object", "properties": {"q": {"type": "string"}},
                  "required": ["q"], "additionalProperties": False}

    def validate(args: Mapping[str, Any]) -> dict[str, Any]:
        if not isinstance(args.get("q"), str):
            raise ToolError("argument q must be a string")
        return {"query": args["q"]}

    async def search(query: str) -> str:
        ran.append({"query": query})
        return f"found {query}"

    registry = ToolRegistry()
    registry.add_tool(Tool("search", "Search the web.", parameters, validate, search))
    assert registry.schemas() == [{"type": "function", "function": {
        "name": "search", "description": "Search the web.", "parameters": parameters}}]
    bad = await registry.call("search", '{"q": 5}', CTX)
    assert (bad.text, bad.ok, ran) == ("error: argument q must be a string", False, [])
    good = await registry.call("search", '{"q": "cats"}', CTX)
    assert (good.text, good.ok, ran) == ("found cats", True, [{"query": "cats"}])
    with pytest.raises(ValueError, match="registered twice"):
        registry.add_tool(Tool("search", "again", parameters, validate, search))


def keys_in(node: Any) -> set[str]:
    if isinstance(node, dict):
        return set(node) | {k for v in node.values() for k in keys_in(v)}
    if isinstance(node, list):
        return {k for v in node for k in keys_in(v)}
    return set()


async def test_the_built_in_schemas_stay_compact(app_factory: AppFactory) -> None:
    # They are in every prompt and count against a local model's context: no pydantic
    # titles, no anyOf-with-null for optional arguments, no $defs; closed objects.
    app = await app_factory()
    for schema in app.tools.schemas():
        parameters = schema["function"]["parameters"]
        assert not keys_in(parameters) & {"title", "anyOf", "$defs", "$ref"}, schema
        assert list(parameters) == ["type", "properties", "required", "additionalProperties"]
        assert parameters["additionalProperties"] is False
        for prop in parameters["properties"].values():
            assert next(iter(prop)) == "type", schema  # the type first, as a person reads it


class Stop(BaseModel):
    city: str
    nights: int


async def test_a_parameter_typed_by_a_model_keeps_its_definition_and_strictness() -> None:
    async def route(stops: list[Stop]) -> str:
        """Plan a route.

        Args:
            stops: where to stay, in order
        """
        return ", ".join(f"{s.city} ({s.nights})" for s in stops)

    registry = ToolRegistry()
    tool = registry.add(route)
    assert tool.parameters["properties"]["stops"]["items"] == {"$ref": "#/$defs/Stop"}
    assert tool.parameters["$defs"]["Stop"]["properties"]["nights"] == {"type": "integer"}
    ok = await registry.call("route", '{"stops": [{"city": "Rome", "nights": 2}]}', CTX)
    assert (ok.text, ok.ok) == ("Rome (2)", True)
    bad = await registry.call("route", '{"stops": [{"city": "Rome", "nights": "2"}]}', CTX)
    assert bad.text == "error: argument stops[0][nights] must be an integer, got str"
