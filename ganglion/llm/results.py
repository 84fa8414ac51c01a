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
    finish_reason: str = ""
    """Why the model stopped, as the server said ("stop", "length", "tool_calls"), or ""."""
    cut: str = ""
    """Why the answer ended early, in words for the user ("[cut off at 4,096 tokens; ask me
    to go on]"), or "" when it ended by itself."""

    @property
    def answer(self) -> str:
        """The content as the user gets it: marked when it was cut (an open code block closed
        first, so the mark reads as text)."""
        if not self.cut:
            return self.content
        text = self.content.rstrip()
        if text.count("```") % 2:
            text += "\n```"
        return f"{text}\n\n{self.cut}" if text else self.cut
