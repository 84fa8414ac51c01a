"""Tool calls that local models write as text instead of structured tool_calls, recovered."""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from ganglion.llm.results import ToolCall

_TAGGED_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|\Z)", re.DOTALL)
_FENCED = re.compile(r"```(?:json)?\s*(.*?)\s*```", re.DOTALL)


def text_tool_calls(content: str, offered: set[str]) -> tuple[str, list[ToolCall]]:
    """Local models sometimes write tool calls as text; recover them.

    Recognises ``<tool_call>{"name": .., "arguments": ..}</tool_call>`` blocks anywhere, or a
    whole answer that is one JSON object naming an offered tool. Returns (remaining text, calls).
    """
    calls: list[ToolCall] = []

    def take(match: re.Match[str]) -> str:
        call = _call_from_json(match.group(1), None)
        if call is None:
            return match.group(0)
        calls.append(call)
        return ""

    rest = _TAGGED_CALL.sub(take, content)
    if calls:
        return rest.strip(), calls
    text = content.strip().removeprefix("<|python_tag|>").strip()
    fenced = _FENCED.fullmatch(text)
    call = _call_from_json(fenced.group(1) if fenced else text, offered)
    return ("", [call]) if call is not None else (content, [])


def _call_from_json(text: str, offered: set[str] | None) -> ToolCall | None:
    if not text.startswith("{"):
        return None
    try:
        obj = json.loads(text)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    if offered is not None and obj["name"] not in offered:
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    raw = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False)
    return ToolCall(id=new_call_id(), name=obj["name"], arguments=raw)


def tool_names(tools: list[dict[str, Any]]) -> set[str]:
    names = set()
    for tool in tools:
        function = tool.get("function")
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"
