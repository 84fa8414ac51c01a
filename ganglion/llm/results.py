"""What one model call returns: the answer's text, its tool calls and the tokens used."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ToolCall:
    id: str
    name: str
    arguments: str
    """Raw JSON text exactly as the model sent it (may be malformed)."""


@dataclass(frozen=True, slots=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    estimated: bool = False
    """True when the server reported no usage and these are our own estimates."""

    @property
    def total(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class ChatResult:
    content: str
    tool_calls: list[ToolCall]
    usage: Usage
    model: str
    endpoint: str
    """Name of the endpoint that answered."""
