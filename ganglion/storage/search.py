"""Full-text search over the visible history (SQLite FTS5, kept in step by migration 10's
triggers): plain words in, the newest matching messages out, each with a marked snippet."""

from __future__ import annotations

from dataclasses import dataclass

from ganglion.messages import ThreadId
from ganglion.storage.backend import Backend

MARK_START, MARK_END = "\x02", "\x03"
"""What snippet() puts around a match (characters a person does not type); ``parts`` splits
on them, so the page marks matches with nodes of its own, never by parsing stored text."""
SNIPPET_TOKENS = 16
MAX_TERMS = 32


class EmptyQuery(ValueError):
    """A query with no word in it: there is nothing to look for."""


@dataclass(frozen=True, slots=True)
class Hit:
    thread_id: ThreadId
    message_id: int
    role: str
    snippet: str
    """The text around the match, each match between MARK_START and MARK_END."""
    created_at: float


def match_expression(query: str) -> str:
    """The query as FTS5 MATCH syntax: each whitespace-separated term quoted (a quote inside
    doubled), so ``"``, ``*``, ``NEAR``, ``AND``, ``(`` are words to find, never operators.
    All terms must occur (FTS5's implicit AND)."""
    terms = query.split()[:MAX_TERMS]
    if not terms:
        raise EmptyQuery("search: the query is empty; type a word to look for")
    return " ".join('"' + t.replace('"', '""') + '"' for t in terms)


def parts(snippet: str) -> list[tuple[str, bool]]:
    """A snippet as (text, matched) pieces, in order; empty pieces dropped."""
    out: list[tuple[str, bool]] = []
    for i, chunk in enumerate(snippet.split(MARK_START)):
        inner, _, rest = chunk.partition(MARK_END) if i else ("", "", chunk)
        if inner:
            out.append((inner, True))
        if rest:
            out.append((rest, False))
    return out


class Search:
    def __init__(self, db: Backend) -> None:
        self.db = db

    async def search(self, query: str, limit: int = 20) -> list[Hit]:
        """The newest ``limit`` visible messages holding every word of ``query``."""
        expression = match_expression(query)
        # The inner query walks the index newest first and stops at the limit: snippets
        # and the join cost only the rows returned, however many match.
        rows = await self.db.fetchall(
            "SELECT m.thread_id, m.id, m.role, m.created_at, f.snip FROM"
            " (SELECT rowid, snippet(messages_fts, 0, ?, ?, '…', ?) AS snip"
            "  FROM messages_fts WHERE messages_fts MATCH ? ORDER BY rowid DESC LIMIT ?) f"
            " JOIN messages m ON m.id = f.rowid ORDER BY m.id DESC",
            (MARK_START, MARK_END, SNIPPET_TOKENS, expression, max(1, limit)))
        return [Hit(ThreadId(r["thread_id"]), r["id"], r["role"], r["snip"], r["created_at"])
                for r in rows]
