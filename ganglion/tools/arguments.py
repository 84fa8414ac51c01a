"""A typed tool function's arguments as a pydantic model: its JSON schema, and the check of a call.

Place in the flow: ``ToolRegistry.add`` builds the model once from the function's signature
and docstring; the schema goes into every prompt that offers the tool, and each call the
model makes is validated against the same model before the function runs. A bad call gets
plain guidance (which argument, what to send instead), never a traceback.
"""

from __future__ import annotations

import inspect
import json
import typing
from collections.abc import Callable, Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model
from pydantic.json_schema import GenerateJsonSchema, JsonSchemaMode, JsonSchemaValue
from pydantic_core import CoreSchema, core_schema

from ganglion.errors import BadArguments

Validate = Callable[[Mapping[str, Any]], dict[str, Any]]
"""The keyword arguments for a call's decoded JSON object, or a BadArguments saying what to fix."""


class _CompactSchema(GenerateJsonSchema):
    """The schema as small as a local model's context wants it: no titles (the names say it),
    and an optional argument shown as its type (null means "left out", see ``validator``)."""

    def field_title_should_be_set(self, schema: Any) -> bool:
        return False

    def nullable_schema(self, schema: core_schema.NullableSchema) -> JsonSchemaValue:
        return self.generate_inner(schema["schema"])

    def generate(self, schema: CoreSchema, mode: JsonSchemaMode = "validation") -> JsonSchemaValue:
        generated = super().generate(schema, mode)
        # Keys in the order a person (and a model) reads them; "required" even when empty.
        properties = {name: _ordered(prop, _PROPERTY_ORDER)
                      for name, prop in generated.get("properties", {}).items()}
        compact = {"type": "object", "properties": properties,
                   "required": generated.get("required", []),
                   "additionalProperties": generated.get("additionalProperties", False)}
        if "$defs" in generated:  # a parameter typed by a model refers to its definition
            compact["$defs"] = generated["$defs"]
        return compact


_PROPERTY_ORDER = ("type", "items", "enum", "description", "default")


def _ordered(schema: dict[str, Any], order: tuple[str, ...]) -> dict[str, Any]:
    known = {k: schema[k] for k in order if k in schema}
    return known | {k: v for k, v in schema.items() if k not in known}


def param_docs(doc: str) -> tuple[str, dict[str, str]]:
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


def arguments_model(func: Callable[..., Any], docs: Mapping[str, str]) -> type[BaseModel]:
    """The model of ``func``'s parameters but ``ctx``: strict (no "5" for 5), no extra keys."""
    hints = typing.get_type_hints(func)
    fields: dict[str, Any] = {}
    for name, param in inspect.signature(func).parameters.items():
        if name in ("ctx", "self"):  # who runs it; a method read off its class
            continue
        default = ... if param.default is inspect.Parameter.empty else param.default
        fields[name] = (hints[name], Field(default, description=docs.get(name)))
    model: type[BaseModel] = create_model(
        func.__name__, __config__=ConfigDict(extra="forbid", strict=True), **fields)
    return model


def schema_of(model: type[BaseModel]) -> dict[str, Any]:
    """The JSON schema the model is offered: ``type``, ``properties``, ``required``, closed."""
    return model.model_json_schema(schema_generator=_CompactSchema)


def validator(model: type[BaseModel]) -> Validate:
    """Check a call's arguments against ``model``; the keyword arguments for the function."""
    optional = {name for name, field in model.model_fields.items() if not field.is_required()}

    def validate(args: Mapping[str, Any]) -> dict[str, Any]:
        # Models often send null for an optional argument they mean to leave out.
        given = {k: v for k, v in args.items() if not (v is None and k in optional)}
        try:
            checked = model.model_validate(given, strict=True)  # nested models too
        except ValidationError as err:
            raise BadArguments(_guidance(err, list(model.model_fields))) from None
        return {name: getattr(checked, name) for name in model.model_fields}

    return validate


_EXPECTED = {"string_type": "a string", "int_type": "an integer", "float_type": "a number",
             "bool_type": "a boolean", "list_type": "an array"}


def _guidance(err: ValidationError, names: list[str]) -> str:
    """What is wrong with the call, in the words the model needs to send a right one."""
    errors = err.errors(include_url=False)
    unknown = sorted(str(e["loc"][0]) for e in errors if e["type"] == "extra_forbidden")
    if unknown:
        expected = ", ".join(names) or "none (send {})"
        return f"unknown argument(s) {', '.join(unknown)}; expected: {expected}"
    missing = [str(e["loc"][0]) for e in errors if e["type"] == "missing"]
    if missing:
        return f"missing required argument(s): {', '.join(missing)}"
    return "; ".join(_wrong(e) for e in errors)


def _wrong(error: Any) -> str:
    loc = error["loc"]
    name = str(loc[0]) + "".join(f"[{part}]" for part in loc[1:])
    got = type(error["input"]).__name__
    if error["type"] in _EXPECTED:
        return f"argument {name} must be {_EXPECTED[error['type']]}, got {got}"
    if error["type"] == "literal_error":
        return f"argument {name} must be {error['ctx']['expected']}"
    return f"argument {name}: {error['msg'][:1].lower()}{error['msg'][1:]}"


def decode(arguments: str) -> dict[str, Any]:
    """A call's arguments as a JSON object ("" is {}), or a BadArguments saying what to send."""
    try:
        args = json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError as err:
        raise BadArguments(f"arguments are not valid JSON ({err.msg} at {err.pos}); "
                           "send a JSON object matching the tool's schema") from None
    if not isinstance(args, dict):
        raise BadArguments("arguments must be a JSON object")
    return args
