"""Reading the model's reply off the wire: streamed chunks, or a whole completion from a server
that ignores ``stream``, each checked for the shape of a chat completion.

Place in the flow: ``LLMClient`` feeds every decoded chunk to ``Received``; anything that is
valid JSON but not a chat completion raises ``LLMBadResponse``, which the client treats as a
failure of that endpoint (failover, then a clear message), never as an empty answer.
Parsed by hand rather than by the SDK's models: it is several times faster, and local servers
bend the shape (arguments as objects, names repeated, no index), which is tolerated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ganglion.errors import LLMBadResponse
from ganglion.llm.results import Usage
from ganglion.llm.text_tools import CallHold


@dataclass(slots=True)
class PartialCall:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Received:
    """Everything one attempt has received so far."""

    content: list[str] = field(default_factory=list)
    calls: dict[int, PartialCall] = field(default_factory=dict)
    usage: Usage | None = None
    model: str = ""
    chunks: int = 0
    """Choices taken: deltas, or a whole message (usage and content-filter chunks do not
    count)."""
    sent_delta: bool = False
    finish_reason: str = ""
    """The first choice's finish_reason ("stop", "length", "tool_calls"...), once sent."""
    looping: bool = False
    """The stream was closed early because the answer kept repeating itself."""
    hold: CallHold = field(default_factory=CallHold)
    """Text not yet passed on: it may be the start of a tool call written as text."""
    _no_index_base: int = 0
    """Key of the first call in the latest chunk that started calls without ``index``."""

    def take(self, chunk: object) -> str:
        """Fold one streamed chunk in; return its new content text."""
        if not isinstance(chunk, dict):
            raise LLMBadResponse("a streamed chunk is not a JSON object")
        self._take_meta(chunk)
        choices = chunk.get("choices")
        if choices is None and isinstance(chunk.get("usage"), dict):
            return ""  # the usage-only chunk some servers send without "choices"
        if not isinstance(choices, list):
            raise LLMBadResponse("a streamed chunk has no list of choices")
        if not choices:
            return ""  # a usage chunk, or Azure's first chunk (content filter results)
        text = ""
        for choice in choices:
            if not isinstance(choice, dict):
                raise LLMBadResponse("a streamed choice is not a JSON object")
            if choice.get("index", 0) != 0:
                continue  # only the first choice is asked for; others are ignored
            self._take_finish(choice)
            delta = choice.get("delta")
            if delta is None:
                # The last chunk with only the finish reason, or Azure's content-filter
                # results (no delta, finish_reason null). Not an answer by itself: if nothing
                # else comes, check_complete says so.
                continue
            if not isinstance(delta, dict):
                raise LLMBadResponse("a streamed choice's delta is not a JSON object")
            self.chunks += 1
            text += self._take_message(delta)
        return text

    def take_completion(self, body: object) -> str:
        """Fold in a whole completion (``choices[0].message``); return its content text."""
        if not isinstance(body, dict):
            raise LLMBadResponse("the reply is not a JSON object")
        self._take_meta(body)
        choices = body.get("choices")
        if not isinstance(choices, list) or not choices:
            raise LLMBadResponse("the reply has no list of choices")
        choice = choices[0]
        message = choice.get("message") if isinstance(choice, dict) else None
        if not isinstance(message, dict):
            raise LLMBadResponse("the reply's choice has no message object")
        self._take_finish(choice)
        self.chunks += 1
        return self._take_message(message)

    def check_complete(self) -> None:
        """At the end of a reply: it said something, and every tool call has a name."""
        if self.chunks == 0:
            raise LLMBadResponse("the reply held no choice with a delta or a message")
        if any(not call.name for call in self.calls.values()):
            raise LLMBadResponse("a tool call has no function name")

    # -- the parts --------------------------------------------------------------------------

    def _take_meta(self, chunk: dict[str, Any]) -> None:
        if isinstance(chunk.get("model"), str) and chunk["model"]:
            self.model = chunk["model"]
        usage = chunk.get("usage")
        if isinstance(usage, dict):
            self.usage = Usage(
                _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
            )

    def _take_finish(self, choice: dict[str, Any]) -> None:
        reason = choice.get("finish_reason")
        if isinstance(reason, str) and reason:
            self.finish_reason = reason

    def _take_message(self, delta: dict[str, Any]) -> str:
        """A delta or a whole message: its text and its (parts of) tool calls."""
        text = delta.get("content")
        if text is not None and not isinstance(text, str):
            raise LLMBadResponse("the answer's text is not a string")
        parts = delta.get("tool_calls")
        if parts is not None and not isinstance(parts, list):
            raise LLMBadResponse("tool_calls is not a list")
        for position, part in enumerate(parts or ()):
            self._take_call(position, part)
        if text:
            self.content.append(text)
        return text or ""

    def _take_call(self, position: int, part: object) -> None:
        if not isinstance(part, dict):
            raise LLMBadResponse("a tool call is not a JSON object")
        function = part.get("function")
        if function is not None and not isinstance(function, dict):
            raise LLMBadResponse("a tool call's function is not a JSON object")
        name = (function or {}).get("name")
        arguments = (function or {}).get("arguments")
        if name is not None and not isinstance(name, str):
            raise LLMBadResponse("a tool call's name is not a string")
        if arguments is not None and not isinstance(arguments, str | dict):
            raise LLMBadResponse("a tool call's arguments are neither text nor an object")
        call_id = part["id"] if isinstance(part.get("id"), str) else ""
        call = self.calls.setdefault(self._call_key(position, part.get("index"), call_id),
                                     PartialCall())
        if call_id:
            call.id = call_id
        # Most servers send the name once; some repeat it on every chunk.
        if name and name != call.name:
            call.name += name
        if isinstance(arguments, str):
            call.arguments.append(arguments)
        elif isinstance(arguments, dict):
            call.arguments.append(json.dumps(arguments, ensure_ascii=False))

    def _call_key(self, position: int, index: object, call_id: str) -> int:
        """Which call a part belongs to: its ``index``; without one, its ``id`` (a new id is a
        new call, even at the same position as the last chunk's), and a part with neither
        continues the call at its position among those started last."""
        if isinstance(index, int):
            return index
        if call_id:
            for key, call in self.calls.items():
                if call.id == call_id:
                    return key
            taken = self.calls.get(self._no_index_base + position)
            if taken is not None and taken.id:  # a different call holds that place
                self._no_index_base = max(self.calls) + 1 - position
        return self._no_index_base + position


def _count(value: object) -> int:
    return value if isinstance(value, int) and value >= 0 else 0
