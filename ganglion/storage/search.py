"""Full-text search over the visible history (SQLite FTS5, kept in step by migration 10's
triggers; PostgreSQL's tsvector with a GIN index): plain words in, the newest matching
messages out, each with a marked snippet."""

from __future__ import annotations

import re
from dataclasses import dataclass

from ganglion.messages import ThreadId
from ganglion.storage.backend import Backend

MARK_START, MARK_END = "\x02", "\x03"
"""What snippet() puts around a match (characters a person does not type); ``parts`` splits
on them, so the page marks matches with nodes of its own, never by parsing stored text."""
SNIPPET_TOKENS = 16
RECENT_FIRST = 2000
"""PostgreSQL: the newest messages searched before the index is asked (see below)."""
MAX_TERMS = 32


SEARCHABLE = ("role IN ('user', 'assistant') AND visible = 1 AND content != ''"
              " AND coalesce(name, '') != 'cancelled' AND replaced IS NULL")
"""The rows search finds: those migration 10 indexes (PostgreSQL's index is partial on this
but the last clause), less those a regenerate or an edit replaced (migration 11)."""


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


def window(marked: str, tokens: int = SNIPPET_TOKENS) -> str:
    """About ``tokens`` words of a marked text around its first match, "…" where cut (as
    FTS5's snippet())."""
    pieces = re.split(r"(\s+)", marked)
    words = pieces[::2]
    if len(words) <= tokens:
        return marked
    first = next((i for i, w in enumerate(words) if MARK_START in w), 0)
    start = max(0, min(first - tokens // 4, len(words) - tokens))
    end = start + tokens
    text = "".join(pieces[2 * start:2 * end - 1])
    if text.count(MARK_START) > text.count(MARK_END):  # a match cut in two: close it
        text += MARK_END
    return ("…" if start else "") + text + ("…" if end < len(words) else "")


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
        if self.db.dialect == "postgres":
            return await self._search_postgres(query, limit)
        expression = match_expression(query)
        # The inner query walks the index newest first and stops at the limit: snippets
        # and the join cost only the rows returned, however many match.
        rows = await self.db.fetchall(
            "SELECT m.thread_id, m.id, m.role, m.created_at, f.snip FROM"
            " (SELECT rowid, snippet(messages_fts, 0, ?, ?, '…', ?) AS snip"
            "  FROM messages_fts WHERE messages_fts MATCH ? ORDER BY rowid DESC LIMIT ?) f"
            " JOIN messages m ON m.id = f.rowid ORDER BY m.id DESC",
            (MARK_START, MARK_END, SNIPPET_TOKENS, expression, max(1, limit)))
        return [Hit(ThreadId(r["thread_id"]), r["id"], r["role"], window(r["snip"]),
                    r["created_at"]) for r in rows]

    async def _search_postgres(self, query: str, limit: int) -> list[Hit]:
        """The same contract on PostgreSQL: each term a phrase that must occur (a term
        of several words, "e-mail", is those words in a row, as in FTS5), newest first."""
        terms = query.split()[:MAX_TERMS]
        if not terms:
            raise EmptyQuery("search: the query is empty; type a word to look for")
        matched = " && ".join(f"phraseto_tsquery('simple', ?{i + 2})"
                              for i in range(len(terms)))
        wanted = max(1, limit)
        params = (wanted, *terms)
        # The whole text marked, cut to a snippet here (ts_headline's own cut drops the
        # punctuation at its ends, which FTS5's snippet keeps).
        shown = ("SELECT m.thread_id, m.id, m.role, m.created_at, ts_headline('simple',"
                 f" m.content, q, 'StartSel={MARK_START}, StopSel={MARK_END},"
                 " HighlightAll=true') AS snip")
        # Two plans, each fast where the other is slow (and the planner, given a LIMIT,
        # may take the wrong one: 1.8 s for a rare word in 365,000 messages): the newest
        # rows first, which finds a common word's hits at once; then the index, which
        # finds a rare word's few hits at once. The same rows either way.
        rows = await self.db.fetchall(
            f"{shown} FROM (SELECT * FROM messages ORDER BY id DESC LIMIT {RECENT_FIRST})"
            f" AS m, (SELECT {matched} AS q) AS query"
            f" WHERE {SEARCHABLE} AND to_tsvector('simple', content) @@ q"
            " ORDER BY m.id DESC LIMIT ?1", params)
        if len(rows) < wanted:
            rows = await self.db.fetchall(
                f"WITH query AS (SELECT {matched} AS q), hits AS MATERIALIZED"
                f" (SELECT id FROM messages, query WHERE {SEARCHABLE}"
                "  AND to_tsvector('simple', content) @@ q)"
                f" {shown} FROM messages m, query WHERE m.id IN"
                " (SELECT id FROM hits ORDER BY id DESC LIMIT ?1) ORDER BY m.id DESC", params)
        return [Hit(ThreadId(r["thread_id"]), r["id"], r["role"], window(r["snip"]),
                    r["created_at"]) for r in rows]
