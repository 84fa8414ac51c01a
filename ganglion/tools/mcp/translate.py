"""Between an MCP server and the registry: tool names, argument checks, results as text.

Place in the flow: ``server`` lists a server's tools and turns each into a registry ``Tool``
with ``tool_name`` and ``arguments_check``; a call's ``CallToolResult`` becomes the text
the ToolRunner fences as data with ``result_text``. Pure functions of what the server sent.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Collection
from typing import Any

import mcp_types as types
from jsonschema import exceptions as schema_errors
from jsonschema import validators

from ganglion.errors import BadArguments
from ganglion.tool_names import MAX_TOOL_NAME, MCP_SEPARATOR
from ganglion.tools.arguments import Validate

_BAD = re.compile(r"[^A-Za-z0-9_-]")


def tool_name(server: str, tool: str, taken: Collection[str]) -> str:
    """The name the model calls ``tool`` of ``server`` by: ``<server>__<tool>``.

    The APIs take ``^[A-Za-z0-9_-]{1,64}$``: other characters become ``_``; a name too long,
    or one that another tool of the server became, is cut and ends with a hash of the tool's
    own name (stable from run to run, so ``tools.policy`` can name it).
    """
    name = f"{server}{MCP_SEPARATOR}{_BAD.sub('_', tool) or '_'}"
    if len(name) <= MAX_TOOL_NAME and name not in taken:
        return name
    digest = hashlib.sha256(tool.encode()).hexdigest()[:8]
    return f"{name[:MAX_TOOL_NAME - 9]}_{digest}"


def arguments_check(schema: dict[str, Any]) -> Validate:
    """The registry's check of the model's arguments against the server's input schema: a
    JSON object, valid where the schema can be checked; a clear error otherwise."""
    try:
        checker: Any = validators.validator_for(schema)(schema)
        checker.check_schema(schema)
    except (schema_errors.SchemaError, TypeError, ValueError):
        checker = None  # a schema we cannot read: the server itself checks the call

    def validate(args: Any) -> dict[str, Any]:
        if not isinstance(args, dict):
            raise BadArguments("the arguments must be a JSON object")
        if checker is not None:
            error = schema_errors.best_match(checker.iter_errors(args))
            if error is not None:
                where = "/".join(str(p) for p in error.absolute_path) or "the arguments"
                raise BadArguments(f"{where}: {error.message} (see the tool's parameters)")
        return {"arguments": args}

    return validate


def input_schema(tool: types.Tool) -> dict[str, Any]:
    """The tool's parameters as the model sees them: always an object schema."""
    schema = dict(tool.input_schema or {})
    schema.setdefault("type", "object")
    if schema.get("type") == "object":
        schema.setdefault("properties", {})
    return schema


def result_text(result: types.CallToolResult, cap: int) -> str:
    """Every part of a result as text (images, audio and binary resources described, not
    dumped), structured content when there is no text, cut to ``cap`` bytes."""
    parts = [_part_text(part) for part in result.content]
    if result.structured_content is not None and not any(
            isinstance(p, types.TextContent) for p in result.content):
        parts.append(json.dumps(result.structured_content, ensure_ascii=False, indent=1))
    text = "\n\n".join(parts) if parts else "(the tool returned nothing)"
    return capped(text, cap)


def _part_text(part: Any) -> str:
    if isinstance(part, types.TextContent):
        return part.text
    if isinstance(part, types.ImageContent | types.AudioContent):
        kind = "image" if isinstance(part, types.ImageContent) else "audio"
        size = len(part.data) * 3 // 4 - part.data[-2:].count("=")  # base64
        return f"[{kind} ({part.mime_type}, {size:,} bytes) left out: not readable as text]"
    if isinstance(part, types.EmbeddedResource):
        res = part.resource
        if isinstance(res, types.TextResourceContents):
            return f"[resource {res.uri}]\n{res.text}"
        mime = res.mime_type or "unknown type"
        return f"[resource {res.uri} ({mime}, binary) left out: not readable as text]"
    if isinstance(part, types.ResourceLink):
        about = f": {part.description}" if part.description else ""
        return f"[link to resource {part.name} at {part.uri}{about}]"
    kind = getattr(part, "type", type(part).__name__)
    return f"[a part of type {kind!r} left out: not understood]"


def capped(text: str, cap: int) -> str:
    """``text`` within ``cap`` bytes of UTF-8: its head and tail, the middle left out."""
    data = text.encode()
    if len(data) <= cap:
        return text
    half = cap // 2
    head = data[:half].decode(errors="ignore")
    tail = data[-half:].decode(errors="ignore")
    cut = len(data) - 2 * half
    return f"{head}\n… ({cut:,} bytes of the result left out: over the cap) …\n{tail}"
