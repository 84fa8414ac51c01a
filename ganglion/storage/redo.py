"""Regenerate and edit-and-resend: a conversation's last exchange replaced, in one transaction
with the inbox row that asks for its new answer (the bus then runs it as any message).

The replaced rows stay in history and in the transcript (``messages.replaced``, shown
collapsed); they leave the model's context and search. Replacing at the moment the inbox row
is stored, not when its turn runs, makes the pair exactly once: acknowledged means replaced
and queued, and a crash before the answer re-runs the row with nothing left to undo.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass, replace
from typing import Any

from ganglion.messages import Inbound
from ganglion.storage.backend import Backend, Conn
from ganglion.storage.conversations import clean_title, first_words
from ganglion.storage.history import History

REDO = "redo"
"""The ``Inbound.meta`` key (stored with the inbox row) that makes a message a redo."""
REGENERATE, EDIT = "regenerate", "edit"
HOW = {REGENERATE: "regenerated", EDIT: "edited"}
"""What ``messages.replaced`` says of the rows a redo replaced."""
SHOWN = ("visible = 1 AND replaced IS NULL AND role != 'summary'"
         " AND NOT (role = 'assistant' AND content = '')")
"""The rows a page draws (see web_conversations.transcript) and has not seen replaced."""
LOOKS_LIKE_COMMAND = re.compile(r"\A\s*[/!][A-Za-z][A-Za-z0-9_]*(\s|\Z)")
"""What ``commands.parse_command`` reads as a command (``/etc/hosts`` is none)."""
BUSY = ("a turn of this conversation is running or waiting: wait for the answer, or Stop "
        "it first; nothing was changed")

NO_ANSWER = "regenerate: the last message has no answer yet; nothing was changed"


def regenerates(msg: Inbound) -> bool:
    """A regenerate: its question is in history already (not stored again)."""
    return msg.meta.get(REDO) == REGENERATE


class RedoRefused(Exception):
    """Why the last exchange cannot be redone now; ``code`` for the page, the text says
    what to do instead."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class Redone:
    msg: Inbound
    """As stored (its inbox id; a regenerate's text is the question it answers again)."""
    is_new: bool
    """False: a resend of a client id already stored (nothing changed now)."""
    replaced: list[int]
    """History ids of the rows replaced, for the tabs to collapse."""
    client_ids: list[str]
    """The edited question's client id (a tab that sent it drew it by that id)."""
    retitled: bool = False
    """The conversation's first-words title follows the edited first message."""


class Redo:
    def __init__(self, db: Backend, history: History) -> None:
        self.db = db
        self._history = history

    async def submit(self, msg: Inbound, after: int) -> Redone:
        """Store ``msg`` (``meta[REDO]``: regenerate or edit) and replace the last exchange.

        ``after`` is the last message the page shows: if the conversation has a newer one,
        the person has not seen what they would replace, so it is refused. Refused too while
        any message of the thread is unanswered (a turn runs or waits), when the last
        question left the model's context (/new, a summary), and an edit into a command.
        """
        kind = msg.meta.get(REDO)
        if kind not in HOW:
            raise ValueError(f"not a redo: {msg.meta!r}")
        if kind == EDIT and LOOKS_LIKE_COMMAND.match(msg.text):
            raise RedoRefused("bad_frame", "an edit cannot be a command; send the command "
                                           "as a new message; nothing was changed")
        tid = msg.thread_id
        async with self.db.transaction(
                after_commit=lambda: self._history.evict(tid)) as conn:
            seen = await _one(conn, "SELECT id, text FROM inbox WHERE thread_id = ?"
                              " AND client_id = ?", (tid, msg.client_id))
            if seen is not None:  # a resend: the first one did it
                return Redone(replace(msg, id=seen["id"], text=seen["text"]), False, [], [])
            if await _one(conn, "SELECT 1 FROM inbox_pruned WHERE thread_id = ?"
                          " AND client_id = ?", (tid, msg.client_id)) is not None:
                return Redone(replace(msg, id=0), False, [], [])
            if await _one(conn, "SELECT 1 FROM inbox WHERE thread_id = ? AND status ="
                          " 'pending' LIMIT 1", (tid,)) is not None:
                raise RedoRefused("busy", BUSY)
            question = await _one(
                conn, "SELECT id, content, inbox_id, in_context FROM messages"
                " WHERE thread_id = ? AND role = 'user' AND visible = 1 AND replaced IS NULL"
                " AND coalesce(name, '') != 'cancelled' ORDER BY id DESC LIMIT 1", (tid,))
            last = await _one(conn, f"SELECT max(id) AS id FROM messages WHERE thread_id = ?"
                              f" AND {SHOWN}", (tid,))
            _check(kind, question, last["id"] if last else None, after)
            assert question is not None
            qid = question["id"]
            replaced = await _exchange(conn, tid, question)
            if kind == REGENERATE:
                replaced.remove(qid)
                if not replaced:  # only other turns' rows after it (a command's answer)
                    raise RedoRefused("not_last", NO_ANSWER)
            marks = ",".join("?" * len(replaced))
            await conn.execute(f"UPDATE messages SET replaced = ?, in_context = 0"
                               f" WHERE id IN ({marks})", (HOW[kind], *replaced))
            client_ids: list[str] = []
            if kind == EDIT and question["inbox_id"] is not None:
                row = await _one(conn, "SELECT client_id FROM inbox WHERE id = ?",
                                 (question["inbox_id"],))
                client_ids = [row["client_id"]] if row else []
            text = question["content"] if kind == REGENERATE else msg.text
            cur = await conn.execute(
                "INSERT INTO inbox (thread_id, client_id, source, sender, text, system, meta,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (tid, msg.client_id, msg.source.value, msg.sender, text, int(msg.system),
                 json.dumps(msg.meta), time.time()))
            assert cur.lastrowid is not None
            stored = replace(msg, id=cur.lastrowid, text=text)
            retitled = False
            if kind == EDIT:
                if question["inbox_id"] is not None:
                    stored = replace(stored, attachments=await _attachments(
                        conn, question["inbox_id"], cur.lastrowid))
                retitled = await _retitle(conn, tid, qid, text)
        return Redone(stored, True, replaced, client_ids, retitled)


def _check(kind: str, question: Any | None, last: int | None, after: int) -> None:
    """Refuse what the person cannot mean (see ``Redo.submit``)."""
    what = "regenerate" if kind == REGENERATE else "edit"
    if question is None:
        raise RedoRefused("not_last", f"{what}: there is no message to {what} yet")
    if last != after:
        raise RedoRefused("not_last", f"{what}: the conversation has a newer message than "
                                      "the one you see; nothing was changed")
    if kind == REGENERATE and last == question["id"]:
        raise RedoRefused("not_last", NO_ANSWER)
    if not question["in_context"]:
        raise RedoRefused("not_last", f"{what}: that exchange is no longer in the model's "
                                      "context (/new or a summary came after it); send a new "
                                      "message instead; nothing was changed")


async def _exchange(conn: Conn, tid: str, question: Any) -> list[int]:
    """The question and what answered it: its turn's rows, an earlier regenerate's, notices
    of no turn (a summary's). Another turn's rows after it stay: a command's answer (/model
    before a regenerate), a reminder that fired."""
    async with conn.execute(
            "SELECT m.id, m.inbox_id, i.meta FROM messages m LEFT JOIN inbox i"
            " ON i.id = m.inbox_id WHERE m.thread_id = ? AND m.id >= ?"
            " AND m.replaced IS NULL AND coalesce(m.name, '') != 'cancelled' ORDER BY m.id",
            (tid, question["id"])) as cur:
        rows = await cur.fetchall()
    return [r["id"] for r in rows
            if r["inbox_id"] in (None, question["inbox_id"])
            or json.loads(r["meta"] or "{}").get(REDO) == REGENERATE]


async def _one(conn: Conn, sql: str,
               params: tuple[object, ...]) -> Any | None:
    async with conn.execute(sql, params) as cur:
        return await cur.fetchone()


async def _attachments(conn: Conn, old: int, new: int) -> tuple[str, ...]:
    """The edited question's files go with its new text."""
    await conn.execute("INSERT INTO media_refs (inbox_id, seq, media_id)"
                       " SELECT ?, seq, media_id FROM media_refs WHERE inbox_id = ?",
                       (new, old))
    async with conn.execute("SELECT media_id FROM media_refs WHERE inbox_id = ? ORDER BY seq",
                            (new,)) as cur:
        return tuple(r["media_id"] for r in await cur.fetchall())


async def _retitle(conn: Conn, tid: str, question: int, text: str) -> bool:
    """The first message edited: a conversation still titled by its first words is titled
    by the new ones (its old words are no longer what it asked)."""
    cur = await conn.execute(
        "UPDATE conversations SET title = ? WHERE thread_id = ? AND title_by = 'words'"
        " AND NOT EXISTS (SELECT 1 FROM messages WHERE thread_id = ? AND role = 'user'"
        " AND id < ? AND replaced IS NULL AND coalesce(name, '') != 'cancelled')",
        (clean_title(first_words(text)), tid, tid, question))
    return cur.rowcount == 1
