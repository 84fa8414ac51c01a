"""Tool calls that local models write as text instead of structured tool_calls: recovered at
the end of the answer, and held back from the page while the answer may still be one."""

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


_OPENINGS = ("<tool_call>", '{"name"', '```json{"name"', '```{"name"', '<|python_tag|>{"name"')
"""How the calls ``text_tool_calls`` recognises begin, with whitespace left out."""
HOLD_LIMIT = 2_000
"""Characters held back at most: a longer answer is shown even if it may still be a call."""


class CallHold:
    """Holds an answer's first deltas back from the page while the answer could still be a
    tool call written as text (which must never show as text), and lets everything through
    once it is clearly text, or longer than ``HOLD_LIMIT``."""

    def __init__(self, limit: int = HOLD_LIMIT) -> None:
        self.limit = limit
        self.held: list[str] = []
        self._chars = 0
        self._open = False

    def take(self, text: str) -> str:
        """One more delta in; what may be shown now (held text included, in order)."""
        if self._open:
            return text
        self.held.append(text)
        self._chars += len(text)
        so_far = "".join(self.held)
        if self._chars < self.limit and could_be_call(so_far):
            return ""
        return self.release()

    def release(self) -> str:
        """The end of the answer (or its text is clear): everything held, and no more hold."""
        self._open = True
        text = "".join(self.held)
        self.held.clear()
        return text


def could_be_call(text: str) -> bool:
    """The text so far is the beginning of a text tool call, or could still become one."""
    head = "".join(text[:200].split())
    return any(o.startswith(head) or head.startswith(o) for o in _OPENINGS)


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
