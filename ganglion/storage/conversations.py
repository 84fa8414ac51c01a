"""The web conversations the page lists: titles, archived, last activity, and their deletion."""

from __future__ import annotations

import sqlite3
import time
from dataclasses import dataclass

from ganglion.messages import ThreadId
from ganglion.storage.backend import Backend

TITLE_CHARS = 80
"""The longest title kept (a person's, the model's or the first words)."""


def first_words(text: str, limit: int = 48) -> str:
    """The title a conversation has until a short one exists: its first message's first
    words, on one line, cut at a word."""
    line = " ".join(text.split())
    if len(line) <= limit:
        return line
    cut = line[:limit].rsplit(" ", 1)[0] or line[:limit]
    return cut + "…"


def clean_title(text: str) -> str:
    """One line of plain text, capped: what a title may be, whoever wrote it."""
    line = " ".join("".join(ch if ch.isprintable() else " " for ch in text).split())
    return line[:TITLE_CHARS].strip()


@dataclass(frozen=True, slots=True)
class Conversation:
    thread_id: ThreadId
    title: str
    title_by: str
    """'words' (the first message's), 'model' (a short title it gave) or 'person'."""
    archived: bool
    last_active: float


@dataclass(frozen=True, slots=True)
class Contents:
    """What deleting a conversation removes, counted to say so first."""

    messages: int
    pending: int
    reminders: int


class Conversations:
    def __init__(self, db: Backend) -> None:
        self.db = db
        self._known: set[ThreadId] | None = None
        """The listed threads: a message in a known one costs no write (read once, then
        kept in step here; this process is the only writer)."""

    async def add(self, thread_id: ThreadId, first_text: str) -> bool:
        """A message was sent in this conversation: list it, titled by its first words, if
        it is not listed yet. True if it is new. Its activity is read from its history."""
        known = await self._listed_ids()
        if thread_id in known:
            return False
        now = time.time()
        cur = await self.db.write(
            "INSERT INTO conversations (thread_id, title, created_at, last_active)"
            " VALUES (?, ?, ?, ?) ON CONFLICT (thread_id) DO NOTHING",
            (thread_id, clean_title(first_words(first_text)), now, now),
            then=lambda _: known.add(thread_id))
        return cur.rowcount == 1

    async def _listed_ids(self) -> set[ThreadId]:
        if self._known is None:
            rows = await self.db.fetchall("SELECT thread_id FROM conversations")
            self._known = {ThreadId(r["thread_id"]) for r in rows}
        return self._known

    async def get(self, thread_id: ThreadId) -> Conversation | None:
        row = await self.db.fetchone(
            "SELECT * FROM conversations WHERE thread_id = ?", (thread_id,))
        return _conversation(row) if row is not None else None

    async def listed(self) -> list[Conversation]:
        """Every conversation, newest activity first (a reply counts as activity too)."""
        # SQLite's two-argument max() is PostgreSQL's greatest(); a tie goes to the newer
        # conversation: SQLite's rowid is the order they were listed in.
        sqlite = self.db.dialect == "sqlite"
        rows = await self.db.fetchall(
            f"SELECT c.thread_id, c.title, c.title_by, c.archived,"
            f" {'max' if sqlite else 'greatest'}(c.last_active, coalesce("
            "(SELECT m.created_at FROM messages m WHERE m.thread_id = c.thread_id"
            " AND m.visible = 1 ORDER BY m.id DESC LIMIT 1), 0)) AS last_active"
            " FROM conversations c ORDER BY last_active DESC,"
            f" {'c.rowid DESC' if sqlite else 'c.created_at DESC, c.thread_id DESC'}")
        return [_conversation(r) for r in rows]

    async def titles(self, thread_ids: set[ThreadId]) -> dict[ThreadId, str]:
        """The titles of those of these threads that are listed conversations."""
        ids = sorted(thread_ids)
        marks = ", ".join("?" * len(ids))
        rows = await self.db.fetchall(
            f"SELECT thread_id, title FROM conversations WHERE thread_id IN ({marks})",
            tuple(ids)) if ids else []
        return {ThreadId(r["thread_id"]): r["title"] for r in rows}

    async def rooms(self) -> list[tuple[ThreadId, float]]:
        """The Matrix rooms with a visible history, newest activity first (read-only)."""
        rows = await self.db.fetchall(
            "SELECT thread_id, max(created_at) AS last_active FROM messages"
            " WHERE visible = 1 AND substr(thread_id, 1, 1) = '!' GROUP BY thread_id"
            " ORDER BY last_active DESC")
        return [(ThreadId(r["thread_id"]), float(r["last_active"])) for r in rows]

    async def rename(self, thread_id: ThreadId, title: str, by: str = "person") -> bool:
        """A new title; the model's is taken only while the first words stand in."""
        only_words = " AND title_by = 'words'" if by == "model" else ""
        cur = await self.db.write(
            f"UPDATE conversations SET title = ?, title_by = ? WHERE thread_id = ?{only_words}",
            (clean_title(title), by, thread_id))
        return cur.rowcount == 1

    async def archive(self, thread_id: ThreadId, archived: bool) -> bool:
        cur = await self.db.write(
            "UPDATE conversations SET archived = ? WHERE thread_id = ?",
            (int(archived), thread_id))
        return cur.rowcount == 1

    async def contents(self, thread_id: ThreadId) -> Contents:
        row = await self.db.fetchone(
            "SELECT (SELECT count(*) FROM messages WHERE thread_id = ?1 AND visible = 1) AS m,"
            " (SELECT count(*) FROM inbox WHERE thread_id = ?1 AND status = 'pending') AS p,"
            " (SELECT count(*) FROM reminders WHERE thread_id = ?1 AND status = 'active') AS r",
            (thread_id,))
        assert row is not None
        return Contents(row["m"], row["p"], row["r"])

    async def delete(self, thread_id: ThreadId) -> Contents:
        """The conversation and everything of it, in one transaction: its history, pending
        turns (their inbox rows and kept tool steps), outbox rows, reminders and settings.
        What was counted is returned (the caller unschedules and drops what ran)."""
        counted = await self.contents(thread_id)
        known = await self._listed_ids()
        async with self.db.transaction(after_commit=lambda: known.discard(thread_id)) as conn:
            await conn.execute(
                "DELETE FROM turn_steps WHERE inbox_id IN"
                " (SELECT id FROM inbox WHERE thread_id = ?)", (thread_id,))
            await conn.execute(  # the files stay until media.keep_days: another may share one
                "DELETE FROM media_refs WHERE inbox_id IN"
                " (SELECT id FROM inbox WHERE thread_id = ?)", (thread_id,))
            await conn.execute("DELETE FROM outbox WHERE thread_id = ?", (thread_id,))
            await conn.execute("DELETE FROM messages WHERE thread_id = ?", (thread_id,))
            await conn.execute("DELETE FROM inbox WHERE thread_id = ?", (thread_id,))
            await conn.execute("DELETE FROM inbox_pruned WHERE thread_id = ?", (thread_id,))
            await conn.execute("DELETE FROM reminders WHERE thread_id = ?", (thread_id,))
            await conn.execute("DELETE FROM thread_settings WHERE thread_id = ?", (thread_id,))
            await conn.execute("DELETE FROM conversations WHERE thread_id = ?", (thread_id,))
        return counted


def _conversation(r: sqlite3.Row) -> Conversation:
    return Conversation(ThreadId(r["thread_id"]), r["title"], r["title_by"],
                        bool(r["archived"]), float(r["last_active"]))
