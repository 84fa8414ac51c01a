"""A short title for a web conversation, asked of the model in the background after its first
exchange; until then (and if that fails) the conversation is titled by its first words.

The request is the turn's own prompt (same head, same history, same tools), its answer, and
one final instruction: it shares the prompt the server has just cached, where an unrelated
prompt would evict it on a one-slot local server (the next message would read ~2,000 tokens
again). It runs after the turn and never in the way of the next one: a turn beginning in the
thread cancels it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ganglion.errors import LLMBadResponse, LLMUnavailable
from ganglion.llm.client import LLMClient
from ganglion.messages import Inbound, Outbound, OutKind, Source, ThreadId, is_web_thread
from ganglion.router import Router
from ganglion.storage.conversations import Conversations, clean_title
from ganglion.storage.history import NewMessage

log = logging.getLogger(__name__)

INSTRUCTION = ("Give this conversation a short title of at most six words, in the language "
               "it is written in. Answer with the title only: no quotes, no punctuation at the "
               "end, no tool call.")
TITLE_TOKENS = 24


def title_of(answer: str) -> str:
    """The model's answer as a title: its first line, quotes and a final stop dropped."""
    lines = [line for line in answer.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    line = lines[0].strip().strip("\"'`*#").removeprefix("Title:").strip()
    return clean_title(line.strip("\"'`*").rstrip(".").strip())


MAX_DROPPED = 3
"""Title requests of one conversation given way to its next turn, in one run, before no
more are asked (its first words stay its title until the next start)."""


class Titler:
    """One background title request per conversation at a time; tried once per run."""

    def __init__(self, llm: LLMClient, conversations: Conversations, router: Router,
                 model: str, idle: Callable[[], Awaitable[None]] | None = None) -> None:
        self.llm = llm
        self.conversations = conversations
        self.router = router
        self.model = model
        self.idle = idle
        """Until no turn runs or waits anywhere (the bus's): a title takes no endpoint slot
        a turn could use (50 new conversations at once answered in twice the time when
        their titles were asked beside them)."""
        self._one = asyncio.Lock()
        """Titles are asked one at a time."""
        self._tasks: dict[ThreadId, asyncio.Task[None]] = {}
        self._tried: set[ThreadId] = set()
        self._titled: set[ThreadId] = set()
        self._dropped: dict[ThreadId, int] = {}
        """Conversations whose title is no longer the first words (the model's, or the
        person's): nothing is asked for them again, not even whether they are."""

    def asking(self, tid: ThreadId) -> bool:
        """Whether a title of this conversation is being asked (or waits for its turn)."""
        task = self._tasks.get(tid)
        return task is not None and not task.done()

    def turn_begins(self, tid: ThreadId) -> None:
        """The thread's next turn goes first: a title still being asked is dropped (it is
        asked again after a later exchange)."""
        task = self._tasks.pop(tid, None)
        if task is not None and not task.done():
            task.cancel()
            # Asked again after a later exchange, a few times at most: a person writing
            # fast would otherwise cost a started and dropped title request every turn.
            self._dropped[tid] = self._dropped.get(tid, 0) + 1
            if self._dropped[tid] < MAX_DROPPED:
                self._tried.discard(tid)

    def consider(self, msg: Inbound, prompt: list[dict[str, Any]], new: list[NewMessage],
                 tools: list[dict[str, Any]] | None) -> None:
        """After a person's turn in a web conversation still titled by its first words."""
        tid = msg.thread_id
        answer = next((m.content for m in reversed(new) if m.role == "assistant"
                       and m.content and not m.tool_calls), "")
        if (msg.system or msg.source is not Source.WEB or not is_web_thread(tid)
                or not answer or tid in self._tried or tid in self._tasks
                or tid in self._titled):
            return
        self._tried.add(tid)
        # As the tool loop sent the steps (the server has them cached so), then the answer.
        exchange: list[dict[str, Any]] = [
            {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
            if m.role == "tool" else
            {"role": "assistant", "content": m.content or None, "tool_calls": m.tool_calls}
            for m in new if m.tool_calls or m.role == "tool"]
        exchange.append({"role": "assistant", "content": answer})
        request = [*prompt, *exchange, {"role": "user", "content": INSTRUCTION}]
        task = asyncio.create_task(self._ask(tid, request, tools), name=f"title-{tid}")
        self._tasks[tid] = task
        task.add_done_callback(lambda t: self._tasks.pop(tid, None)
                               if self._tasks.get(tid) is t else None)

    async def _ask(self, tid: ThreadId, request: list[dict[str, Any]],
                   tools: list[dict[str, Any]] | None) -> None:
        try:
            async with self._one:
                if self.idle is not None:
                    await self.idle()
                found = await self.conversations.get(tid)
                if found is None or found.title_by != "words":
                    self._titled.add(tid)  # renamed or titled meanwhile: never asked again
                    return
                result = await self.llm.chat(request, model=self.model, tools=tools,
                                             thread_id=tid,
                                             params={"max_tokens": TITLE_TOKENS})
            title = "" if result.tool_calls else title_of(result.content)
            if not title:
                log.info("[%s] no title from the model; the first words stay", tid)
                return
            if await self.conversations.rename(tid, title, by="model"):
                self._titled.add(tid)
                log.info("[%s] titled %r", tid, title)
                await self.router.publish(Outbound(tid, OutKind.TITLE, title))
        except asyncio.CancelledError:
            raise
        except (LLMUnavailable, LLMBadResponse) as err:
            log.info("[%s] no title (%s); the first words stay", tid, err)
        except Exception:  # a title is a nicety: never a crash
            log.exception("[%s] asking for a title failed; the first words stay", tid)

    async def stop(self) -> None:
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
