"""Context compaction: older turns summarised by the compaction model, replaced by the summary."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from ganglion.llm.client import LLMClient
from ganglion.messages import ThreadId
from ganglion.storage.history import History, StoredMessage
from ganglion.tokens import CHARS_PER_TOKEN, MESSAGE_OVERHEAD, estimate_tokens
from ganglion.turn.summary import Summariser, cut_summary, summary_cap

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


def _part(m: StoredMessage) -> str:
    if m.role == "summary":
        return f"[earlier summary]\n{m.content}"
    if m.role == "tool":
        return f"[tool {m.name or ''} result]\n{m.content[:2000]}"
    if m.role == "assistant" and m.tool_calls:
        calls = ", ".join(c.get("function", {}).get("name", "?") for c in m.tool_calls)
        return f"assistant (called {calls}): {m.content}"
    return f"{m.role}: {m.content}"


def transcript_text(messages: Sequence[StoredMessage]) -> str:
    return "\n\n".join(_part(m) for m in messages)


def transcript_within(messages: Sequence[StoredMessage], room_tokens: int) -> str:
    """``transcript_text`` within ``room_tokens`` (estimated), so that the summary request
    fits the model's context: an earlier summary is cut to a quarter of the room, then the
    oldest messages are left out (the memory flush was offered them whole)."""
    parts = [_part(m) for m in messages]
    text = "\n\n".join(parts)
    if estimate_tokens(text) <= room_tokens:
        return text
    first = 1 if messages and messages[0].role == "summary" else 0
    if first:
        parts[0] = "[earlier summary]\n" + cut_summary(messages[0].content, room_tokens // 4)
    room = room_tokens * CHARS_PER_TOKEN - 40  # the note on what was left out
    total = sum(len(p) + 2 for p in parts)
    left_out = 0
    while total > room and first + left_out < len(parts) - 1:
        total -= len(parts[first + left_out]) + 2
        left_out += 1
    note = [f"[{left_out} earlier messages left out]"] if left_out else []
    text = "\n\n".join([*parts[:first], *note, *parts[first + left_out:]])
    return text if len(text) <= room else text[-room:]  # one message larger than the room


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

    def plan(
        self, context: Sequence[StoredMessage], overhead_tokens: int, *, force: bool = False,
        context_tokens: int | None = None,
    ) -> tuple[list[StoredMessage], list[StoredMessage]]:
        """(to summarise, to keep): the most recent quarter of ``context_tokens`` (the turn's
        model's budget; else the compactor's) kept, or less when that, the prompt and the
        summary would still leave the context over AFTER."""
        budget = context_tokens or self.context_tokens
        keep = 0 if force else int(budget * KEEP)
        while True:
            old, kept = split_for_compaction(context, keep)
            summary = summary_cap(context_size(old), self.context_tokens) + MESSAGE_OVERHEAD
            after = overhead_tokens + context_size(kept) + summary
            if keep == 0 or after < budget * AFTER:
                return old, kept
            keep = keep // 2 if keep > 64 else 0

    async def compact(
        self, thread_id: ThreadId, context: Sequence[StoredMessage], *, force: bool = False,
        overhead_tokens: int = 0, context_tokens: int | None = None,
    ) -> str | None:
        """Summarise older messages; returns the notice for the user, or None if nothing to do.

        An earlier summary is summarised again with what follows it; alone, when it is larger
        than a new summary may be (a model that ignored its cap, or a summary from before
        caps existed). ``context_tokens``: the budget of the turn's model (else the
        compactor's)."""
        old, _kept = self.plan(context, overhead_tokens, force=force,
                               context_tokens=context_tokens)
        size = context_size(old)
        if not old or (len(old) < 2 and not force and
                       size <= summary_cap(size, self.context_tokens) + MESSAGE_OVERHEAD):
            return None
        if self.before is not None:
            await self.before(thread_id, old)
        transcript = transcript_within(old, self.summariser.room(size))
        summary = await self.summariser.write(thread_id, transcript, size)
        if not summary:
            log.warning("[%s] compaction model returned an empty summary; nothing replaced",
                        thread_id)
            return None
        # A summary's id is newer than the messages kept after it: it never marks the cut.
        up_to = max((m.id for m in old if m.role != "summary"), default=0)
        await self.history.replace_with_summary(thread_id, up_to, summary)
        log.info("[%s] compacted %d messages (%d tokens) into %d characters",
                 thread_id, len(old), size, len(summary))
        plural = "s" if len(old) != 1 else ""
        return (f"Compacted {len(old)} earlier message{plural} into a summary to stay within "
                "the model's context. Recent messages are kept as they were.")
