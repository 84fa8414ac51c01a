"""Context compaction: older turns summarised by the compaction model, replaced by the summary."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from ganglion.llm.client import LLMClient
from ganglion.messages import ThreadId
from ganglion.storage.history import History, StoredMessage
from ganglion.tokens import MESSAGE_OVERHEAD
from ganglion.turn.summary import Summariser, summary_cap

log = logging.getLogger(__name__)

TRIGGER = 0.75
"""Compact when the context reaches this share of ``context_tokens``..."""
KEEP = 0.25
"""...and keep the most recent turns up to this share verbatim..."""
AFTER = 0.5
"""...unless the context would then stay over this share (prompt and summary included): then
less is kept, so the next turns do not compact again at once."""

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
        self.summariser = Summariser(llm, model, context_tokens)
        self.before = before
        """Runs before a thread is summarised (the tools part saves durable facts there)."""

    def needed(self, context: Sequence[StoredMessage], overhead_tokens: int) -> bool:
        return context_size(context) + overhead_tokens >= self.context_tokens * TRIGGER

    def fits(self, context: Sequence[StoredMessage], overhead_tokens: int) -> bool:
        """Whether the model can still take the whole context (compaction only prepares)."""
        return context_size(context) + overhead_tokens < self.context_tokens

    def plan(
        self, context: Sequence[StoredMessage], overhead_tokens: int, *, force: bool = False
    ) -> tuple[list[StoredMessage], list[StoredMessage]]:
        """(to summarise, to keep): the most recent quarter kept, or less when that, the
        prompt and the summary would still leave the context over AFTER."""
        keep = 0 if force else int(self.context_tokens * KEEP)
        while True:
            old, kept = split_for_compaction(context, keep)
            summary = summary_cap(context_size(old), self.context_tokens) + MESSAGE_OVERHEAD
            after = overhead_tokens + context_size(kept) + summary
            if keep == 0 or after < self.context_tokens * AFTER:
                return old, kept
            keep = keep // 2 if keep > 64 else 0

    async def compact(
        self, thread_id: ThreadId, context: Sequence[StoredMessage], *, force: bool = False,
        overhead_tokens: int = 0,
    ) -> str | None:
        """Summarise older messages; returns the notice for the user, or None if nothing to do.

        An earlier summary is summarised again with what follows it; alone, when it is larger
        than a new summary may be (a model that ignored its cap, or a summary from before
        caps existed)."""
        old, _kept = self.plan(context, overhead_tokens, force=force)
        size = context_size(old)
        if not old or (len(old) < 2 and not force and
                       size <= summary_cap(size, self.context_tokens) + MESSAGE_OVERHEAD):
            return None
        if self.before is not None:
            await self.before(thread_id, old)
        summary = await self.summariser.write(thread_id, transcript_text(old), size)
        if not summary:
            log.warning("[%s] compaction model returned an empty summary; nothing replaced",
                        thread_id)
            return None
        # A summary's id is newer than the messages kept after it: it never marks the cut.
        up_to = max((m.id for m in old if m.role != "summary"), default=0)
        await self.history.replace_with_summary(thread_id, up_to, summary)
        log.info("[%s] compacted %d messages (%d tokens) into %d characters",
                 thread_id, len(old), size, len(summary))
        return (f"Compacted {len(old)} earlier messages into a summary to stay within the "
                "model's context. Recent messages are kept as they were.")
