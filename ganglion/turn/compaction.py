"""Context compaction: older turns summarised by the compaction model, replaced by the summary."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from ganglion.llm.client import LLMClient
from ganglion.messages import ThreadId
from ganglion.storage.history import History, StoredMessage

log = logging.getLogger(__name__)

TRIGGER = 0.75
"""Compact when the context reaches this share of ``context_tokens``..."""
KEEP = 0.25
"""...and keep the most recent turns up to this share verbatim."""

SUMMARY_INSTRUCTIONS = (
    "You compress a conversation between a user and their assistant so that the assistant can "
    "continue it without the full text. Write a concise summary in the conversation's language: "
    "facts about the user, decisions made, open questions, tasks in progress and their state, "
    "names, numbers and file paths that matter. Do not add anything that was not said."
)

BeforeCompaction = Callable[[ThreadId, Sequence[StoredMessage]], Awaitable[None]]


def context_size(context: Sequence[StoredMessage]) -> int:
    return sum(m.tokens for m in context)


def split_for_compaction(
    context: Sequence[StoredMessage], keep_tokens: int
) -> tuple[list[StoredMessage], list[StoredMessage]]:
    """(to summarise, to keep). The kept tail starts at a user message, so a tool call and
    its results are never split; the newest user message is always kept."""
    kept = 0
    cut = len(context)
    for i in range(len(context) - 1, -1, -1):
        kept += context[i].tokens
        if context[i].role == "user":
            if kept > keep_tokens and cut < len(context):
                break
            cut = i
    return list(context[:cut]), list(context[cut:])


def transcript_text(messages: Sequence[StoredMessage]) -> str:
    lines = []
    for m in messages:
        if m.role == "summary":
            lines.append(f"[earlier summary]\n{m.content}")
        elif m.role == "tool":
            lines.append(f"[tool {m.name or ''} result]\n{m.content[:2000]}")
        elif m.role == "assistant" and m.tool_calls:
            calls = ", ".join(c.get("function", {}).get("name", "?") for c in m.tool_calls)
            lines.append(f"assistant (called {calls}): {m.content}")
        else:
            lines.append(f"{m.role}: {m.content}")
    return "\n\n".join(lines)


class Compactor:
    def __init__(
        self,
        llm: LLMClient,
        history: History,
        model: str,
        context_tokens: int,
        before: BeforeCompaction | None = None,
    ) -> None:
        self.llm = llm
        self.history = history
        self.model = model
        self.context_tokens = context_tokens
        self.before = before
        """Runs before a thread is summarised (the tools part saves durable facts there)."""

    def needed(self, context: Sequence[StoredMessage], overhead_tokens: int, *,
               context_tokens: int | None = None, scale: float = 1.0) -> bool:
        """Whether the request (the context and ``overhead_tokens``: system text, tool
        schemas), our estimate times ``scale`` (the server's own count per token we
        estimate), nears ``context_tokens`` (the turn's model's; else the compactor's)."""
        budget = context_tokens or self.context_tokens
        return (context_size(context) + overhead_tokens) * scale >= budget * TRIGGER

    def fits(self, context: Sequence[StoredMessage], overhead_tokens: int, *,
             context_tokens: int | None = None, scale: float = 1.0) -> bool:
        """Whether the model can still take the whole context (compaction only prepares)."""
        budget = context_tokens or self.context_tokens
        return (context_size(context) + overhead_tokens) * scale < budget

    async def compact(
        self, thread_id: ThreadId, context: Sequence[StoredMessage], *, force: bool = False,
        context_tokens: int | None = None,
    ) -> str | None:
        """Summarise older messages; returns the notice for the user, or None if nothing to do.
        ``context_tokens``: the budget of the thread's model (else the compactor's)."""
        keep = 0 if force else int((context_tokens or self.context_tokens) * KEEP)
        old, _kept = split_for_compaction(context, keep)
        if len(old) < 2 and not (force and old):
            return None
        if self.before is not None:
            await self.before(thread_id, old)
        result = await self.llm.chat(
            [
                {"role": "system", "content": SUMMARY_INSTRUCTIONS},
                {"role": "user", "content": transcript_text(old)},
            ],
            model=self.model,
            thread_id=thread_id,
        )
        summary = result.content.strip()
        if not summary:
            log.warning("[%s] compaction model returned an empty summary; nothing replaced",
                        thread_id)
            return None
        await self.history.replace_with_summary(thread_id, old[-1].id, summary)
        log.info("[%s] compacted %d messages (%d tokens) into %d characters",
                 thread_id, len(old), context_size(old), len(summary))
        return (f"Compacted {len(old)} earlier messages into a summary to stay within the "
                "model's context. Recent messages are kept as they were.")
