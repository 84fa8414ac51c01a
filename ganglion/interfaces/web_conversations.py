"""The page's conversation verbs over its WebSocket: the list, rename, archive, delete, and a
Matrix room read (read-only); and how a transcript is drawn for the page.

Every frame here comes through the token-checked socket of ``web.py``; each is validated
whole (pydantic) before anything changes, and a malformed one gets a clear error.
"""

from __future__ import annotations

import html
import logging
import sqlite3
from collections.abc import Awaitable, Callable, Iterable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from ganglion.bus import Bus
from ganglion.interfaces.web_send import malformed
from ganglion.messages import Role, ThreadId, is_web_thread
from ganglion.render import MarkdownRenderer
from ganglion.router import ROLE_OF
from ganglion.storage.conversations import Conversation, Conversations
from ganglion.storage.history import NEW_CONVERSATION, History, StoredMessage
from ganglion.storage.search import EmptyQuery, Search, parts

log = logging.getLogger(__name__)

# pydantic checks patterns with Rust's regex: "\z" is its end of text (it has no "\Z").
WebThread = Annotated[str, StringConstraints(pattern=r"\Aweb_[0-9a-f]{16,64}\z")]
RoomThread = Annotated[str, StringConstraints(pattern=r"\A![^\s:]+(:\S+)?\z", max_length=255)]
APPROVAL_PREFIX = "**Approval needed** (`"
"""The card ``tools.policy.Approvals`` posts: the page adds Approve and Deny buttons to it."""


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ListFrame(_Frame):
    type: Literal["list"]


class RenameFrame(_Frame):
    type: Literal["rename"]
    thread_id: WebThread
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                            max_length=1000)]


class ArchiveFrame(_Frame):
    type: Literal["archive"]
    thread_id: WebThread
    archived: bool


class ContentsFrame(_Frame):
    type: Literal["contents"]
    thread_id: WebThread


class DeleteFrame(_Frame):
    type: Literal["delete"]
    thread_id: WebThread


class ReadFrame(_Frame):
    type: Literal["read"]
    thread_id: RoomThread


class SearchFrame(_Frame):
    type: Literal["search"]
    query: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                            max_length=500)]
    limit: Annotated[int, Field(ge=1, le=100)] = 20


AnyFrame = Annotated[
    ListFrame | RenameFrame | ArchiveFrame | ContentsFrame | DeleteFrame | ReadFrame
    | SearchFrame,
    Field(discriminator="type"),
]
FRAMES: TypeAdapter[AnyFrame] = TypeAdapter(AnyFrame)
KINDS = frozenset({"list", "rename", "archive", "contents", "delete", "read", "search"})

Put = Callable[[dict[str, Any]], object]
"""Queue a frame for one tab."""
ToAll = Callable[[dict[str, Any]], None]
"""Queue a frame for every open tab (every sidebar shows the change)."""
Deleted = Callable[[ThreadId], Awaitable[None]]
"""After a conversation was deleted: unschedule its reminders (the composition root's)."""
Files = Callable[[list[StoredMessage]], Awaitable[dict[int, list[dict[str, Any]]]]]
"""The attachments of a transcript's messages by message id (``MediaFiles.of_rows``)."""


def item(c: Conversation) -> dict[str, Any]:
    """A conversation as the sidebar lists it; the title is text, the page never parses it."""
    return {"thread_id": c.thread_id, "title": c.title, "title_by": c.title_by,
            "archived": c.archived, "last_active": c.last_active}


def message_frame(renderer: MarkdownRenderer, mid: int, role: Role, text: str,
                  reply_to: int) -> dict[str, Any]:
    """A message as the page draws it: server-rendered HTML, an approval card marked."""
    rendered = (renderer.html(text) if role in (Role.ASSISTANT, Role.SYSTEM)
                else html.escape(text))
    frame = {"type": "message", "id": mid, "role": role.value, "text": text,
             "html": rendered, "reply_to": reply_to}
    if role is Role.SYSTEM and text.startswith(NEW_CONVERSATION):
        frame["divider"] = True
    if role is Role.SYSTEM and text.startswith(APPROVAL_PREFIX):
        card = text[len(APPROVAL_PREFIX):].split("`", 1)[0]
        if card.isalnum():
            frame["approval"] = card
    return frame


def transcript(renderer: MarkdownRenderer, rows: Iterable[StoredMessage],
               shown: Callable[[str], str],
               files: dict[int, list[dict[str, Any]]] | None = None) -> list[dict[str, Any]]:
    """The visible messages of a thread, for the page; ``shown`` masks what was queued,
    ``files`` are the attachments of user messages by message id."""
    entries = []
    for m in rows:
        if m.role not in ROLE_OF or (m.role == "assistant" and not m.content):
            continue  # summaries; assistant steps that only called tools
        cancelled = m.role == "user" and m.name == "cancelled"
        text = shown(m.content) if cancelled else m.content  # as when it was queued
        entry = message_frame(renderer, m.id, ROLE_OF[m.role], text, 0)
        del entry["type"], entry["reply_to"]
        entry["at"] = m.created_at  # shown on hover
        if m.role == "tool" and m.name:
            entry["name"] = m.name  # the tool's name, for the collapsed summary
        if cancelled:
            entry["cancelled"] = True
        if files and m.id in files:
            entry["attachments"] = files[m.id]
        if m.replaced:  # regenerated or edited: shown collapsed
            entry["replaced"] = m.replaced
        entries.append(entry)
    return entries


class ConversationFrames:
    """Answers the sidebar's frames; changes go to every tab."""

    def __init__(self, conversations: Conversations, history: History, bus: Bus,  # noqa: PLR0917
                 renderer: MarkdownRenderer, to_all: ToAll,
                 deleted: Deleted | None = None, files: Files | None = None) -> None:
        self.conversations = conversations
        self._history = history
        self._bus = bus
        self._renderer = renderer
        self._to_all = to_all
        self._deleted = deleted
        self._files = files
        self._search_verb = Search(history.db)

    async def handle(self, put: Put, raw: dict[str, Any]) -> None:
        try:
            frame = FRAMES.validate_python(raw)
        except ValidationError as err:
            put({"type": "error", "code": "bad_frame", "message": malformed(raw.get("type"), err)})
            return
        if isinstance(frame, ListFrame):
            put(await self.listing())
        elif isinstance(frame, RenameFrame | ArchiveFrame):
            await self._change(put, frame)
        elif isinstance(frame, ContentsFrame):
            counted = await self.conversations.contents(ThreadId(frame.thread_id))
            put({"type": "contents", "thread_id": frame.thread_id,
                 "messages": counted.messages, "pending": counted.pending,
                 "reminders": counted.reminders})
        elif isinstance(frame, DeleteFrame):
            await self._delete(put, ThreadId(frame.thread_id))
        elif isinstance(frame, SearchFrame):
            await self._search(put, frame)
        else:
            rows = await self._history.transcript(ThreadId(frame.thread_id))
            files = await self._files(rows) if self._files is not None else {}
            put({"type": "room", "thread_id": frame.thread_id,
                 "transcript": transcript(self._renderer, rows, lambda t: t, files)})

    async def _search(self, put: Put, frame: SearchFrame) -> None:
        """The newest hits in the web conversations and Matrix rooms (the owner's page sees
        them all), each titled as the sidebar titles it."""
        try:
            hits = await self._search_verb.search(frame.query, frame.limit)
        except EmptyQuery as err:
            put({"type": "error", "code": "bad_frame", "message": f"{err}; nothing was changed"})
            return
        titles = await self.conversations.titles({h.thread_id for h in hits})
        results = [
            {"thread_id": h.thread_id, "id": h.message_id, "role": h.role, "at": h.created_at,
             "title": titles.get(h.thread_id, h.thread_id), "room": h.thread_id.startswith("!"),
             "snippet": [[text, marked] for text, marked in parts(h.snippet)]}
            for h in hits if h.thread_id in titles or h.thread_id.startswith("!")]
        put({"type": "search_results", "query": frame.query, "results": results})

    async def listing(self) -> dict[str, Any]:
        return {"type": "conversations",
                "items": [item(c) for c in await self.conversations.listed()],
                "rooms": [{"thread_id": tid, "last_active": at}
                          for tid, at in await self.conversations.rooms()]}

    async def added(self, thread_id: ThreadId, first_text: str) -> None:
        """A message was sent: a new conversation joins every sidebar."""
        try:
            if await self.conversations.add(thread_id, first_text):
                await self.changed(thread_id)
        except sqlite3.Error as err:  # the message is stored; only its listing waits
            log.error("[%s] could not list the conversation: %s", thread_id, err)

    async def changed(self, thread_id: ThreadId) -> None:
        found = await self.conversations.get(thread_id)
        if found is not None:
            self._to_all({"type": "conversation", "item": item(found)})

    async def _change(self, put: Put, frame: RenameFrame | ArchiveFrame) -> None:
        tid = ThreadId(frame.thread_id)
        if isinstance(frame, RenameFrame):
            done = await self.conversations.rename(tid, frame.title)
        else:
            done = await self.conversations.archive(tid, frame.archived)
        if not done:
            put({"type": "error", "code": "not_found",
                 "message": f"{frame.type}: no conversation {tid}; nothing was changed"})
            return
        await self.changed(tid)

    async def _delete(self, put: Put, tid: ThreadId) -> None:
        if await self.conversations.get(tid) is None and is_web_thread(tid):
            put({"type": "error", "code": "not_found",
                 "message": f"delete: no conversation {tid}; nothing was changed"})
            return
        # Nothing of it runs any more: its queue dropped, its running turn stopped (what
        # that turn would store finds its message gone and stores nothing).
        await self._bus.cancel_queued(tid)
        self._bus.cancel_turn(tid)
        counted = await self.conversations.delete(tid)
        self._history.evict(tid)
        log.info("[%s] conversation deleted: %d messages, %d pending, %d reminders", tid,
                 counted.messages, counted.pending, counted.reminders)
        if self._deleted is not None:
            await self._deleted(tid)
        self._to_all({"type": "conversation_deleted", "thread_id": tid})
