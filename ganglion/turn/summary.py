"""One summary for compaction that shrinks: capped, checked shorter than its input, asked
again once in fewer words, else cut at a sentence."""

from __future__ import annotations

import logging
import re

from ganglion.errors import LLMBadResponse, LLMUnavailable
from ganglion.llm.client import LLMClient
from ganglion.llm.results import ChatResult
from ganglion.messages import ThreadId
from ganglion.tokens import CHARS_PER_TOKEN, estimate_tokens

log = logging.getLogger(__name__)

SHRINK = 4
"""A summary gets at most 1/SHRINK of the tokens it replaces..."""
MIN_TOKENS = 256
"""...but never less than this (a short input still needs room for its facts)..."""
SHARE = 0.125
"""...and never more than this share of the context budget: with the quarter kept verbatim,
a compacted context stays well under the point where compaction starts again."""
WORDS_PER_TOKEN = 0.75
"""Models count words, not tokens: the budget is said in words."""
CUT_MARK = "[summary cut]"

INSTRUCTIONS = (
    "You compress a conversation between a user and their assistant so that the assistant can "
    "continue it without the full text. Write a concise summary in the conversation's language: "
    "facts about the user, decisions made, open questions, tasks in progress and their state, "
    "names, numbers and file paths that matter. Do not add anything that was not said. "
    "An earlier summary in it is part of the conversation: fold it in. "
    "Use at most {words} words."
)
TIGHTER = (
    " Your last summary had about {had} words: far too long. This time use at most {words} "
    "words; keep only what the assistant needs to go on."
)

REQUEST_TOKENS = 2 * estimate_tokens(INSTRUCTIONS + TIGHTER) + 64
"""What a summary request costs besides the transcript (instructions, template), generously."""

_BOUNDARY = re.compile(r"[.!?…](?=\s)|\n")


def summary_cap(input_tokens: int, context_tokens: int) -> int:
    """The ``max_tokens`` of a summary of ``input_tokens`` for a ``context_tokens`` budget."""
    ceiling = max(64, int(context_tokens * SHARE))
    return min(max(input_tokens // SHRINK, MIN_TOKENS), ceiling)


def words_for(tokens: int) -> int:
    return max(10, int(tokens * WORDS_PER_TOKEN))


def cut_summary(text: str, limit_tokens: int, *, ended: bool = True) -> str:
    """``text`` cut to at most ``limit_tokens`` (estimated) at its last sentence or line end,
    else its last space, and marked as cut. A text that did not end (``ended=False``: the
    server stopped it) loses its unfinished last sentence even when it is short enough."""
    room = max(0, (limit_tokens - estimate_tokens("\n" + CUT_MARK)) * CHARS_PER_TOKEN)
    if ended and len(text) <= room:
        head = text
    else:
        edge = min(room, len(text))
        # One character past the edge, so a full stop right at it counts.
        ends = [m.end() for m in _BOUNDARY.finditer(text, 0, edge + 1) if m.end() <= edge]
        # A sentence end, unless that loses more than half of a text that did end.
        near = ends and (ends[-1] >= edge // 2 or not ended)
        end = ends[-1] if near else text.rfind(" ", 0, edge + 1)
        head = text[:end if end > 0 else edge]
    head = head.rstrip()
    return f"{head}\n{CUT_MARK}" if head else CUT_MARK


class Summariser:
    """Asks the compaction model for a summary no longer than its share."""

    def __init__(self, llm: LLMClient, model: str, context_tokens: int) -> None:
        self.llm = llm
        self.model = model
        self.context_tokens = context_tokens

    def room(self, input_tokens: int) -> int:
        """How much transcript a summary request can carry and still fit the context."""
        cap = summary_cap(input_tokens, self.context_tokens)
        return max(256, self.context_tokens - cap - REQUEST_TOKENS)

    async def write(self, thread_id: ThreadId, transcript: str, input_tokens: int) -> str:
        """The summary of ``transcript`` (``input_tokens`` long in the context), or "" when
        the model said nothing. Raises what the client raises for the first request."""
        cap = summary_cap(input_tokens, self.context_tokens)
        # What an accepted summary may cost (estimated): within its cap, and shorter than
        # what it replaces (else compacting would grow the context).
        limit = max(1, min(cap, input_tokens - 1))
        result = await self._ask(thread_id, transcript, cap, words_for(limit))
        text = result.content.strip()
        if not text:
            return ""
        if result.finish_reason == "length":
            # Its start is sound; asking again would cost as long once more.
            log.warning("[%s] the summary reached its cap of %d tokens; cut at a sentence",
                        thread_id, cap)
            return cut_summary(text, limit, ended=False)
        had = estimate_tokens(text)
        if had <= limit:
            return text
        log.info("[%s] a summary of ~%d tokens is over its %d (input %d); asking for fewer "
                 "words", thread_id, had, limit, input_tokens)
        tighter = TIGHTER.format(had=words_for(had), words=words_for(limit) // 2)
        try:
            again = await self._ask(thread_id, transcript, cap, words_for(limit), tighter)
        except (LLMUnavailable, LLMBadResponse) as err:
            log.warning("[%s] the shorter summary failed (%s); cutting the first", thread_id,
                        err)
            return cut_summary(text, limit)
        second = again.content.strip()
        if second and again.finish_reason != "length" and estimate_tokens(second) <= limit:
            return second
        log.warning("[%s] the summary was still over its %d tokens when asked again; cut at "
                    "a sentence", thread_id, limit)
        if not second:
            return cut_summary(text, limit)
        return cut_summary(second, limit, ended=again.finish_reason != "length")

    async def _ask(self, thread_id: ThreadId, transcript: str, cap: int, words: int,
                   tighter: str = "") -> ChatResult:
        return await self.llm.chat(
            [
                {"role": "system", "content": INSTRUCTIONS.format(words=words) + tighter},
                {"role": "user", "content": transcript},
            ],
            model=self.model,
            thread_id=thread_id,
            params={"max_tokens": cap},
        )
