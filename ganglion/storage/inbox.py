"""The durable inbox: every accepted message is a row here before it is acknowledged."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace

from ganglion.messages import Inbound, Source, ThreadId
from ganglion.storage.backend import Backend
from ganglion.storage.redo import REDO, REGENERATE

NOT_PRUNED = ("NOT EXISTS (SELECT 1 FROM inbox_pruned WHERE thread_id = ?1"
              " AND client_id = ?2)")
"""The key was not answered long ago either (retention keeps only the keys of old rows)."""


class Inbox:
    def __init__(self, db: Backend) -> None:
        self.db = db

    async def add(self, msg: Inbound) -> tuple[Inbound, bool]:
        """Store ``msg``; returns it with its id, and whether it is new.

        A message whose (thread_id, client_id) is already stored is not stored again: the
        stored one is returned with ``False`` (a resend after a lost acknowledgement), with
        id 0 when retention has since kept only its key.
        """
        insert = (
            "INSERT INTO inbox (thread_id, client_id, source, sender, text, system, meta,"
            # Typed: PostgreSQL reads an untyped parameter in a SELECT list as text.
            " created_at) SELECT ?, ?, ?, ?, ?, CAST(? AS INTEGER), ?,"
            f" CAST(? AS DOUBLE PRECISION) WHERE {NOT_PRUNED}"
            " ON CONFLICT (thread_id, client_id) DO NOTHING")
        params = (msg.thread_id, msg.client_id, msg.source.value, msg.sender, msg.text,
                  int(msg.system), json.dumps(msg.meta), time.time())
        if msg.attachments:  # the message and what it attaches: one commit
            async with self.db.transaction() as conn:
                cur = await conn.execute(insert, params)
                if cur.rowcount == 1 and cur.lastrowid is not None:
                    await conn.executemany(
                        "INSERT INTO media_refs (inbox_id, seq, media_id) VALUES (?, ?, ?)",
                        [(cur.lastrowid, seq, media_id)
                         for seq, media_id in enumerate(msg.attachments)])
        else:
            cur = await self.db.write(insert, params)
        if cur.rowcount == 1 and cur.lastrowid is not None:
            return replace(msg, id=cur.lastrowid), True
        row = await self.db.fetchone(
            "SELECT id FROM inbox WHERE thread_id = ? AND client_id = ?",
            (msg.thread_id, msg.client_id),
        )
        return replace(msg, id=row["id"] if row else 0), False  # 0: answered, row pruned

    async def add_many(self, msgs: Sequence[Inbound]) -> list[tuple[Inbound, bool]]:
        """``add`` for many messages in one statement per 500 (a start that fires a thousand
        missed reminders); in the same order as ``msgs``. A message stored before comes back
        with id 0: its caller only needs to know it is not new."""
        out: list[tuple[Inbound, bool]] = []
        for start in range(0, len(msgs), 500):
            chunk = msgs[start:start + 500]
            now = time.time()
            params: list[object] = []
            for m in chunk:
                params += [m.thread_id, m.client_id, m.source.value, m.sender, m.text,
                           int(m.system), json.dumps(m.meta), now]
            rows = ", ".join(["(?, ?, ?, ?, ?, CAST(? AS INTEGER), ?,"
                              " CAST(? AS DOUBLE PRECISION))"] * len(chunk))
            async with self.db.transaction() as conn, conn.execute(
                "INSERT INTO inbox (thread_id, client_id, source, sender, text, system,"
                f" meta, created_at) SELECT * FROM (VALUES {rows}) AS v WHERE NOT EXISTS"
                " (SELECT 1 FROM inbox_pruned p WHERE p.thread_id = v.column1"
                " AND p.client_id = v.column2)"
                " ON CONFLICT (thread_id, client_id) DO NOTHING"
                " RETURNING id, thread_id, client_id", params,
            ) as cur:
                new = {(r["thread_id"], r["client_id"]): r["id"]
                       for r in await cur.fetchall()}
            for m in chunk:
                rid = new.pop((m.thread_id, m.client_id), None)  # a repeat in msgs: not new
                out.append((replace(m, id=rid or 0), rid is not None))
        return out

    async def known(self, thread_id: ThreadId, client_ids: list[str]) -> set[str]:
        """Of these client ids, the ones this thread already has (answered or not)."""
        if not client_ids:
            return set()
        marks = ",".join("?" * len(client_ids))
        rows = await self.db.fetchall(
            f"SELECT client_id FROM inbox WHERE thread_id = ? AND client_id IN ({marks})"
            " UNION SELECT client_id FROM inbox_pruned WHERE thread_id = ?"
            f" AND client_id IN ({marks})",
            (thread_id, *client_ids, thread_id, *client_ids),
        )
        return {r["client_id"] for r in rows}

    async def meta_of(self, inbox_id: int) -> dict[str, str] | None:
        """A stored message's meta (its Matrix event id ...); None once the row is gone."""
        row = await self.db.fetchone("SELECT meta FROM inbox WHERE id = ?", (inbox_id,))
        return json.loads(row["meta"]) if row else None

    async def has_thread(self, thread_id: ThreadId) -> bool:
        """Whether this thread has any message yet (answered, pending or pruned)."""
        row = await self.db.fetchone(
            "SELECT 1 FROM inbox WHERE thread_id = ?1"
            " UNION ALL SELECT 1 FROM inbox_pruned WHERE thread_id = ?1 LIMIT 1", (thread_id,))
        return row is not None

    async def pending(self) -> list[Inbound]:
        """Accepted but unanswered messages, oldest first (recovered at start)."""
        attachments = (
            "(SELECT json_group_array(media_id) FROM (SELECT media_id FROM media_refs r"
            " WHERE r.inbox_id = i.id ORDER BY seq))" if self.db.dialect == "sqlite" else
            "(SELECT coalesce(json_agg(media_id ORDER BY seq), '[]')::text FROM media_refs r"
            " WHERE r.inbox_id = i.id)")
        rows = await self.db.fetchall(
            f"SELECT i.*, {attachments} AS attachments"
            " FROM inbox i WHERE status = 'pending' ORDER BY id"
        )
        return [
            Inbound(
                thread_id=ThreadId(r["thread_id"]),
                text=r["text"],
                sender=r["sender"],
                source=Source(r["source"]),
                client_id=r["client_id"],
                system=bool(r["system"]),
                id=r["id"],
                meta=json.loads(r["meta"]),
                attachments=tuple(json.loads(r["attachments"])),
            )
            for r in rows
        ]

    async def pending_for(self, thread_id: ThreadId) -> list[tuple[int, str, str]]:
        """(id, client_id, text) of this thread's unanswered messages, for a reconnecting tab
        (not a regenerate's: it asks again what history shows already)."""
        rows = await self.db.fetchall(
            "SELECT id, client_id, text, meta FROM inbox WHERE status = 'pending'"
            " AND thread_id = ? ORDER BY id",
            (thread_id,),
        )
        return [(r["id"], r["client_id"], r["text"]) for r in rows
                if json.loads(r["meta"]).get(REDO) != REGENERATE]

    async def cancel(self, inbox_ids: Sequence[int]) -> list[tuple[int, str]]:
        """Mark these queued messages answered without running them (the person cancelled
        them), each kept in the transcript as a cancelled question, out of the model's
        context. Returns (id, client_id) of those that were still pending, in order."""
        if not inbox_ids:
            return []
        now = time.time()
        marks = ",".join("?" * len(inbox_ids))
        async with self.db.transaction() as conn:
            async with conn.execute(
                f"UPDATE inbox SET status = 'done', done_at = ? WHERE id IN ({marks})"
                " AND status = 'pending' RETURNING id, client_id, thread_id, text",
                (now, *inbox_ids),
            ) as cur:
                rows = sorted(await cur.fetchall(), key=lambda r: r["id"])
            await conn.executemany(
                "INSERT INTO messages (thread_id, role, content, name, inbox_id, in_context,"
                " visible, created_at) VALUES (?, 'user', ?, 'cancelled', ?, 0, 1, ?)"
                " ON CONFLICT DO NOTHING",
                [(r["thread_id"], r["text"], r["id"], now) for r in rows],
            )
        return [(r["id"], r["client_id"]) for r in rows]

    async def redact(self, inbox_id: int, text: str) -> None:
        """Replace a stored message's text (a command carrying a secret, once it is read)."""
        async with self.db.transaction() as conn:
            await conn.execute("UPDATE inbox SET text = ? WHERE id = ?", (text, inbox_id))
