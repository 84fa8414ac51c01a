"""Per-thread history: the LLM's context, the visible transcript, and the atomic end of a turn."""

from __future__ import annotations

import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from ganglion.messages import Inbound, ThreadId
from ganglion.storage.backend import Backend, Cursor
from ganglion.tokens import message_tokens

log = logging.getLogger(__name__)

NEW_CONVERSATION = ("Started a fresh conversation from here: earlier messages are no longer "
                    "in the model's context.")
"""How /new answers; an interface may draw a notice starting so as a divider."""


@dataclass(frozen=True, slots=True)
class StoredMessage:
    """One row of history. ``role`` is user / assistant / tool / summary / notice."""

    id: int
    thread_id: ThreadId
    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    tokens: int = 0
    created_at: float = 0.0
    inbox_id: int | None = None
    replaced: str | None = None
    """'regenerated' or 'edited' (``storage/redo.py``): shown collapsed, out of the context."""


@dataclass(slots=True)
class NewMessage:
    """A message produced by a turn, written when the turn ends."""

    role: str
    content: str
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    name: str | None = None
    in_context: bool = True
    visible: bool = True
    deliver: bool = False
    """Queue it in the outbox for the interfaces (final answers, notices)."""
    tokens: int = 0
    meta: dict[str, Any] = field(default_factory=dict)


def row_to_message(r: Any) -> StoredMessage:
    return StoredMessage(
        id=r["id"],
        thread_id=ThreadId(r["thread_id"]),
        role=r["role"],
        content=r["content"],
        tool_calls=json.loads(r["tool_calls"]) if r["tool_calls"] else None,
        tool_call_id=r["tool_call_id"],
        name=r["name"],
        tokens=r["tokens"],
        created_at=r["created_at"],
        inbox_id=r["inbox_id"],
        replaced=r["replaced"],
    )


class History:
    def __init__(self, db: Backend, cached_threads: int = 256) -> None:
        self.db = db
        # The context of recently active threads, kept in step with every write below: a turn
        # reads its context without a query proportional to the whole history.
        self._contexts: OrderedDict[ThreadId, list[StoredMessage]] = OrderedDict()
        self._stepped: set[int] | None = None
        """Inbox ids with kept tool steps (see ``steps``); None until first needed."""
        self._cached_threads = cached_threads

    async def begin_turn(self, msg: Inbound, content: str) -> None:
        """Put the inbound's user message into history (once, even when a turn is re-run)."""
        now, tokens = time.time(), message_tokens(content)

        def cache(cur: Cursor) -> None:  # also when a Stop landed meanwhile
            if cur.rowcount == 1 and cur.lastrowid is not None:
                self._append(StoredMessage(cur.lastrowid, msg.thread_id, "user", content,
                                           tokens=tokens, created_at=now, inbox_id=msg.id))

        await self.db.write(
            "INSERT INTO messages (thread_id, role, content, inbox_id, tokens, created_at)"
            " VALUES (?, 'user', ?, ?, ?, ?) ON CONFLICT DO NOTHING",
            (msg.thread_id, content, msg.id, tokens, now), then=cache,
        )

    async def add_step(self, inbox_id: int, seq: int, message: NewMessage) -> None:
        """One message of a running turn's tool exchange, kept as it happens."""
        stepped = await self._inbox_ids_with_steps()
        await self.db.write(
            "INSERT INTO turn_steps (inbox_id, seq, message) VALUES (?, ?, ?)"
            " ON CONFLICT (inbox_id, seq) DO UPDATE SET message = excluded.message",
            (inbox_id, seq, json.dumps(asdict(message))),
            then=lambda _: stepped.add(inbox_id),  # a re-run must find the step, Stop or not
        )

    async def steps(self, inbox_id: int) -> list[NewMessage]:
        """The tool exchange an earlier run of this turn got through, in order (no read at
        all for the many turns that have none)."""
        if inbox_id not in await self._inbox_ids_with_steps():
            return []
        rows = await self.db.fetchall(
            "SELECT message FROM turn_steps WHERE inbox_id = ? ORDER BY seq", (inbox_id,)
        )
        return [NewMessage(**json.loads(r["message"])) for r in rows]

    async def _inbox_ids_with_steps(self) -> set[int]:
        """Which inbound messages have kept steps: read once (those a crash left), then kept
        up to date here (this process is the only writer)."""
        if self._stepped is None:
            rows = await self.db.fetchall("SELECT DISTINCT inbox_id FROM turn_steps")
            self._stepped = {int(r["inbox_id"]) for r in rows}
        return self._stepped

    async def finish_turn(
        self, thread_id: ThreadId, inbox_id: int | None, new: Sequence[NewMessage]
    ) -> list[tuple[int, NewMessage]]:
        """Write the turn's messages, queue deliveries and mark the inbound answered: atomically.

        An inbound already answered is answered no more (a Stop that lands just after the
        answer was stored): nothing is written. Returns the stored ids of the messages
        queued for delivery, in order.
        """
        queued: list[tuple[int, NewMessage]] = []
        stored: list[StoredMessage] = []
        now = time.time()
        stepped = await self._inbox_ids_with_steps()

        def cache() -> None:  # once committed, also when the caller was cancelled meanwhile
            if inbox_id:
                stepped.discard(inbox_id)
            for message in stored:
                self._append(message)

        async with self.db.transaction(after_commit=cache) as conn:
            if inbox_id:
                cur = await conn.execute(
                    "UPDATE inbox SET status = 'done', done_at = ? WHERE id = ?"
                    " AND status = 'pending'", (now, inbox_id))
                if cur.rowcount == 0:
                    log.info("[%s] message #%d was answered already; not again", thread_id,
                             inbox_id)
                    return []
                if inbox_id in stepped:
                    await conn.execute("DELETE FROM turn_steps WHERE inbox_id = ?",
                                       (inbox_id,))
            for m in new:
                tokens = m.tokens or message_tokens(m.content)
                cur = await conn.execute(
                    "INSERT INTO messages (thread_id, role, content, tool_calls, tool_call_id,"
                    " name, inbox_id, in_context, visible, tokens, created_at)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        thread_id,
                        m.role,
                        m.content,
                        json.dumps(m.tool_calls) if m.tool_calls else None,
                        m.tool_call_id,
                        m.name,
                        inbox_id,
                        int(m.in_context),
                        int(m.visible),
                        tokens,
                        now,
                    ),
                )
                assert cur.lastrowid is not None
                if m.in_context:
                    stored.append(StoredMessage(
                        cur.lastrowid, thread_id, m.role, m.content, m.tool_calls,
                        m.tool_call_id, m.name, tokens, now, inbox_id))
                if m.deliver:
                    await conn.execute(
                        "INSERT INTO outbox (thread_id, message_id, created_at) VALUES (?, ?, ?)",
                        (thread_id, cur.lastrowid, now),
                    )
                    queued.append((cur.lastrowid, m))
        return queued

    async def context(self, thread_id: ThreadId) -> list[StoredMessage]:
        """The messages the model sees: since the last compaction or /new."""
        cached = self._contexts.get(thread_id)
        if cached is None:
            rows = await self.db.fetchall(
                "SELECT * FROM messages WHERE thread_id = ? AND in_context = 1"
                " ORDER BY role != 'summary', id",
                (thread_id,),
            )
            cached = self._contexts[thread_id] = [row_to_message(r) for r in rows]
            if len(self._contexts) > self._cached_threads:
                self._contexts.popitem(last=False)
        else:
            self._contexts.move_to_end(thread_id)
        return list(cached)

    def _append(self, message: StoredMessage) -> None:
        cached = self._contexts.get(message.thread_id)
        if cached is not None:
            cached.append(message)

    async def transcript(self, thread_id: ThreadId, limit: int = 500) -> list[StoredMessage]:
        """What the user sees of this thread, oldest first (the last ``limit`` messages)."""
        rows = await self.db.fetchall(
            "SELECT * FROM (SELECT * FROM messages WHERE thread_id = ? AND visible = 1"
            " ORDER BY id DESC LIMIT ?) AS recent ORDER BY id",
            (thread_id, limit),
        )
        return [row_to_message(r) for r in rows]

    async def forget_context(self, thread_id: ThreadId) -> int:
        """/new: the model starts over. The transcript keeps what was said (the page draws
        the reply, ``NEW_CONVERSATION``, as a divider). Returns the rows dropped."""
        async with self.db.transaction(after_commit=lambda: self._forget(thread_id)) as conn:
            cur = await conn.execute(
                "UPDATE messages SET in_context = 0 WHERE thread_id = ? AND in_context = 1",
                (thread_id,),
            )
        return cur.rowcount

    def _forget(self, thread_id: ThreadId) -> None:
        self._contexts.pop(thread_id, None)

    def evict(self, thread_id: ThreadId) -> None:
        """The thread's rows were deleted elsewhere (``Conversations.delete``): forget them."""
        self._forget(thread_id)

    async def replace_with_summary(
        self, thread_id: ThreadId, up_to_id: int, summary: str
    ) -> int:
        """Compaction: messages up to ``up_to_id`` leave the context; the summary takes their place.

        A previous summary leaves the context too (the new one was written from it). The
        context lists the summary first, whatever its id.
        """
        now = time.time()
        # The context is re-read in its new order at the next turn.
        async with self.db.transaction(after_commit=lambda: self._forget(thread_id)) as conn:
            cur = await conn.execute(
                "UPDATE messages SET in_context = 0"
                " WHERE thread_id = ? AND in_context = 1 AND (id <= ? OR role = 'summary')",
                (thread_id, up_to_id),
            )
            dropped = cur.rowcount
            await conn.execute(
                "INSERT INTO messages (thread_id, role, content, in_context, visible, tokens,"
                " created_at) VALUES (?, 'summary', ?, 1, 0, ?, ?)",
                (thread_id, summary, message_tokens(summary), now),
            )
        return dropped
