"""The one token estimate, for wherever no model server counted: history, prompts, usage."""

from __future__ import annotations

CHARS_PER_TOKEN = 4
"""A cheap, model-independent ratio: close for English prose, generous for code."""
MESSAGE_OVERHEAD = 4
"""What a chat message costs beyond its text (role and separators in the chat template)."""


def estimate_tokens(text: str) -> int:
    """About ``CHARS_PER_TOKEN`` characters a token, rounded up (any text costs one)."""
    return -(-len(text) // CHARS_PER_TOKEN)


def message_tokens(content: str) -> int:
    """What a message costs in a context: its text and the message around it."""
    return estimate_tokens(content) + MESSAGE_OVERHEAD
