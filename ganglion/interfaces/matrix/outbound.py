"""What the Matrix interface puts in a room besides routing: message contents and typing notices.

A reply is Markdown: its ``body`` is the Markdown text itself (what plain clients show) and its
``formatted_body`` the HTML rendered from it. A reply too long for one event is split. A tool
call (``matrix.show_tool_calls``) is one short notice line, never the tool's output.
"""

from __future__ import annotations

import asyncio
import html
import json
import logging
import re
from collections.abc import Awaitable, Callable
from typing import Any

from ganglion.messages import Outbound, OutKind, Role, ThreadId
from ganglion.render import MarkdownRenderer

log = logging.getLogger(__name__)

MAX_CONTENT_BYTES = 40_000
"""An event may hold 64 KiB once encrypted (base64 adds a third): longer replies are split."""
CHUNK_CHARS = 12_000
TOOL_CALL_CHARS = 160
HEARD = re.compile(r"\A🎤 “[^\n]*”\Z")
"""A voice message's transcript as the worker tells it (``turn/attachments.py``'s HEARD,
one line): shown in a room as a quote, so it reads as the person's words, not the bot's."""


def reply_contents(out: Outbound, renderer: MarkdownRenderer) -> list[dict[str, Any]]:
    """The ``m.room.message`` content(s) for a MESSAGE or TOOL event: usually one."""
    if out.kind is OutKind.TOOL:
        return [tool_notice(out.text)]
    notice = out.role is Role.SYSTEM  # notices never ping
    text = out.text
    if notice and HEARD.match(text):
        text = "> " + text  # Markdown's quote: "> " in the body, <blockquote> in the HTML
    contents = [_content(text, notice, renderer)]
    if len(json.dumps(contents[0])) > MAX_CONTENT_BYTES:
        contents = [_content(part, notice, renderer) for part in split_text(text, CHUNK_CHARS)]
    return contents


def final_edit(out: Outbound, renderer: MarkdownRenderer,
               event_id: str) -> list[dict[str, Any]]:
    """A streamed answer's final: an edit of its early post ``event_id`` with the answer's
    (first part), then any further parts as events of their own.

    Smaller parts than ``reply_contents`` makes when needed: an edit holds its text twice
    (``m.new_content`` and the fallback for clients without edits, which show the whole text
    after "* ")."""
    notice = out.role is Role.SYSTEM
    for limit in (0, CHUNK_CHARS, CHUNK_CHARS // 2, CHUNK_CHARS // 4, CHUNK_CHARS // 8):
        parts = split_text(out.text, limit) if limit else [out.text]
        first = replacement(_content(parts[0], notice, renderer), event_id)
        if len(json.dumps(first)) <= MAX_CONTENT_BYTES:
            break
    return [first, *(_content(part, notice, renderer) for part in parts[1:])]


def progress_content(text: str, renderer: MarkdownRenderer) -> dict[str, Any]:
    """An answer in progress (its early post, or an edit's new content)."""
    return _content(text, False, renderer)


def replacement(content: dict[str, Any], event_id: str) -> dict[str, Any]:
    """An ``m.replace`` edit of ``event_id`` to ``content`` (its relations stay the original's:
    an edit cannot change them)."""
    new = {k: v for k, v in content.items() if k != "m.relates_to"}
    edit: dict[str, Any] = {"msgtype": new["msgtype"], "body": "* " + new["body"],
                            "m.new_content": new, "m.mentions": {},
                            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id}}
    if "formatted_body" in new:
        edit["format"] = new["format"]
        edit["formatted_body"] = "* " + new["formatted_body"]
        if len(json.dumps(edit)) > MAX_CONTENT_BYTES:  # edit-aware clients lose nothing
            del edit["format"], edit["formatted_body"]
    return edit


def tool_notice(display: str) -> dict[str, Any]:
    """One ``m.notice`` line for a tool call: the call and its outcome (``shell: ls -l · ok in
    12 ms, 340 characters``), from the first two paragraphs of the worker's tool entry
    (``ganglion.tools.policy.ToolRun.display``). Nothing of it is read as Markdown or HTML,
    and it mentions nobody, whatever the call holds."""
    call, _, rest = display.partition("\n\n")
    outcome = rest.partition("\n\n")[0]
    call = _one_line(call, TOOL_CALL_CHARS).removesuffix(":")  # a call without arguments
    outcome = _one_line(outcome, 80)
    body = f"Tool {call}" + (f" · {outcome}" if outcome else "")
    formatted = f"Tool <code>{html.escape(call)}</code>" + (
        f" · {html.escape(outcome)}" if outcome else "")
    return {"msgtype": "m.notice", "body": body, "format": "org.matrix.custom.html",
            "formatted_body": formatted, "m.mentions": {}}


def _one_line(text: str, limit: int) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[:limit - 1] + "…"


def _content(text: str, notice: bool, renderer: MarkdownRenderer) -> dict[str, Any]:
    # "m.mentions": {}: a model writing "@room" or someone's name pings nobody.
    content: dict[str, Any] = {"msgtype": "m.notice" if notice else "m.text", "body": text,
                               "format": "org.matrix.custom.html",
                               "formatted_body": renderer.html(text), "m.mentions": {}}
    if len(json.dumps(content)) > MAX_CONTENT_BYTES:
        del content["format"], content["formatted_body"]
    return content


def split_text(text: str, limit: int) -> list[str]:
    """Pieces of at most ``limit`` characters, cut at line ends where possible."""
    parts: list[str] = []
    while len(text) > limit:
        cut = text.rfind("\n", 0, limit)
        cut = cut + 1 if cut > limit // 2 else limit
        parts.append(text[:cut])
        text = text[cut:]
    if text:
        parts.append(text)
    return parts


SetTyping = Callable[[ThreadId, bool], Awaitable[None]]


class TypingNotices:
    """"The bot is typing" in a room while its turn runs.

    Shown only once a turn has lasted ``delay`` seconds (a quick answer costs no request at
    all), renewed before the homeserver lets it lapse, cleared when the turn is over.
    """

    def __init__(self, set_typing: SetTyping, delay: float = 0.5, refresh: float = 20.0) -> None:
        self.set_typing = set_typing
        self.delay = delay
        self.refresh = refresh
        self._keepers: dict[ThreadId, asyncio.Task[None]] = {}
        self._shown: set[ThreadId] = set()
        self._clearing: set[asyncio.Task[None]] = set()

    def update(self, thread_id: ThreadId, state: str) -> None:
        """A worker STATE: any busy one ("thinking", "summarising", "streaming", "tool")
        starts the notice, "idle" ends it."""
        if state != "idle":
            if thread_id not in self._keepers:
                self._keepers[thread_id] = asyncio.create_task(
                    self._keep(thread_id), name=f"matrix-typing-{thread_id}")
            return
        keeper = self._keepers.pop(thread_id, None)
        if keeper is None:
            return
        keeper.cancel()
        shown = thread_id in self._shown
        self._shown.discard(thread_id)
        task = asyncio.create_task(self._clear(thread_id, keeper, shown))
        self._clearing.add(task)
        task.add_done_callback(self._clearing.discard)

    async def stop(self) -> None:
        tasks = [*self._keepers.values(), *self._clearing]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._keepers.clear()
        self._shown.clear()

    async def _keep(self, thread_id: ThreadId) -> None:
        await asyncio.sleep(self.delay)
        while True:
            self._shown.add(thread_id)
            await self.set_typing(thread_id, True)
            await asyncio.sleep(self.refresh)

    async def _clear(self, thread_id: ThreadId, keeper: asyncio.Task[None], shown: bool) -> None:
        await asyncio.gather(keeper, return_exceptions=True)  # its request first, then "off"
        if shown:
            await self.set_typing(thread_id, False)
