"""Usage in SQLite: one row per admitted message and per LLM call; limits and /stats read it.

Place in the flow: the worker admits a turn through ``ganglion.access`` (which writes a
``message`` row here), the LLM client reports each answer's tokens (a ``call`` row). Rows are
kept, so rate windows, daily quotas and statistics survive a restart.

``account`` is who pays: the sender for people, ``autonomous`` for reminders and heartbeats.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ganglion.storage.backend import Backend


@dataclass(frozen=True, slots=True)
class Payer:
    """Who a turn's usage is charged to, and where it happened."""

    account: str
    sender: str
    thread_id: str
    source: str


@dataclass(frozen=True, slots=True)
class Admission:
    """What the limits were checked against when a message asked to be admitted."""

    admitted: bool
    recent: list[float]
    """Times of this account's messages inside the rate window, oldest first (only looked
    up when there is a rate limit)."""
    tokens_today: int
    """Only summed when there is a token quota."""


@dataclass(frozen=True, slots=True)
class Tally:
    """Messages and tokens of one account or one thread."""

    key: str
    messages: int
    tokens: int


@dataclass(frozen=True, slots=True)
class Group:
    """Messages and tokens of several accounts or threads, counted without naming them."""

    count: int
    messages: int
    tokens: int


@dataclass(frozen=True, slots=True)
class Stats:
    since: float | None
    """Time of the first row, None when nothing was recorded yet."""
    total: Tally
    top_accounts: list[Tally]
    top_threads: list[Tally]
    this_account: Tally
    this_thread: Tally
    apart: list[Tally]
    """The accounts asked for by name (the autonomous one), whoever reads."""
    other_accounts: Group
    """Every account but this one and those apart."""
    other_threads: Group


@dataclass(frozen=True, slots=True)
class ModelUse:
    """One model's LLM calls in a span of time (the settings page's "token use")."""

    model: str
    calls: int
    prompt_tokens: int
    completion_tokens: int


_TALLY = (
    "SELECT {key} AS key, SUM(CASE WHEN kind = 'message' THEN 1 ELSE 0 END) AS messages,"
    " SUM(prompt_tokens + completion_tokens) AS tokens FROM usage"
)


_INSERT_MESSAGE = (
    "INSERT INTO usage (at, account, sender, thread_id, source, kind)"
    " VALUES (?, ?, ?, ?, ?, 'message')"
)


def payer_row(payer: Payer) -> tuple[str, str, str, str]:
    return (payer.account, payer.sender, payer.thread_id, payer.source)


class UsageLog:
    def __init__(self, db: Backend) -> None:
        self.db = db

    async def admit(
        self,
        payer: Payer,
        *,
        window_start: float,
        max_in_window: int | None,
        day_start: float,
        max_tokens_today: int | None,
        now: float | None = None,
    ) -> Admission:
        """Record a message for ``payer`` unless a limit is reached; check and write at once.

        One transaction, so two rooms of the same sender cannot both slip past the limit.
        A refused message is not recorded: it does not push the retry time further out.
        """
        now = time.time() if now is None else now
        recent: list[float] = []
        tokens_today = 0
        if max_in_window is None and max_tokens_today is None:  # nothing to check
            await self.db.write(_INSERT_MESSAGE, (now, *payer_row(payer)))
            return Admission(True, recent, tokens_today)
        async with self.db.transaction() as conn:
            if max_in_window is not None:
                async with conn.execute(
                    "SELECT at FROM usage WHERE account = ? AND kind = 'message' AND at > ?"
                    " ORDER BY at",
                    (payer.account, window_start),
                ) as cur:
                    recent = [float(r["at"]) for r in await cur.fetchall()]
            if max_tokens_today is not None:
                async with conn.execute(
                    "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS n FROM usage"
                    " WHERE account = ? AND kind = 'call' AND at >= ?",
                    (payer.account, day_start),
                ) as cur:
                    row = await cur.fetchone()
                tokens_today = int(row["n"]) if row else 0
            admitted = (max_in_window is None or len(recent) < max_in_window) and (
                max_tokens_today is None or tokens_today < max_tokens_today
            )
            if admitted:
                await conn.execute(_INSERT_MESSAGE, (now, *payer_row(payer)))
        return Admission(admitted, recent, tokens_today)

    async def record_call(
        self,
        payer: Payer,
        *,
        model: str,
        endpoint: str,
        prompt_tokens: int,
        completion_tokens: int,
        now: float | None = None,
    ) -> None:
        await self.db.write(
            "INSERT INTO usage (at, account, sender, thread_id, source, kind, model,"
            " endpoint, prompt_tokens, completion_tokens)"
            " VALUES (?, ?, ?, ?, ?, 'call', ?, ?, ?, ?)",
            (time.time() if now is None else now, *payer_row(payer), model, endpoint,
             prompt_tokens, completion_tokens),
        )

    async def tokens_since(self, account: str, start: float) -> int:
        row = await self.db.fetchone(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS n FROM usage"
            " WHERE account = ? AND kind = 'call' AND at >= ?",
            (account, start),
        )
        return int(row["n"]) if row else 0

    async def all_tokens_since(self, start: float) -> int:
        """Tokens of every account since ``start`` (today's, for /status)."""
        row = await self.db.fetchone(
            "SELECT COALESCE(SUM(prompt_tokens + completion_tokens), 0) AS n FROM usage"
            " WHERE kind = 'call' AND at >= ?", (start,))
        return int(row["n"]) if row else 0

    async def by_model(self, start: float, end: float) -> list[ModelUse]:
        """The LLM calls of every account from ``start`` until ``end``, per model, most
        tokens first."""
        rows = await self.db.fetchall(
            "SELECT model, COUNT(*) AS calls, SUM(prompt_tokens) AS prompt,"
            " SUM(completion_tokens) AS completion FROM usage"
            " WHERE kind = 'call' AND at >= ? AND at < ? GROUP BY model"
            " ORDER BY SUM(prompt_tokens + completion_tokens) DESC, model", (start, end))
        return [ModelUse(str(r["model"] or "?"), int(r["calls"]), int(r["prompt"] or 0),
                         int(r["completion"] or 0)) for r in rows]

    async def stats(self, account: str, thread_id: str, *, top: int = 5,
                    apart: tuple[str, ...] = ()) -> Stats:
        """Totals, this account's and this thread's; the ``top`` accounts and threads by name
        (0 for a reader who may not see others' names); the others only counted."""
        first = await self.db.fetchone("SELECT MIN(at) AS since FROM usage")
        since = float(first["since"]) if first and first["since"] is not None else None
        total = await self._tally(_TALLY.format(key="''"), ())
        accounts = await self._tallies(
            _TALLY.format(key="account") + " GROUP BY account"
            " ORDER BY tokens DESC, messages DESC, account LIMIT ?", (top,))
        threads = await self._tallies(
            _TALLY.format(key="thread_id") + " GROUP BY thread_id"
            " ORDER BY tokens DESC, messages DESC, thread_id LIMIT ?", (top,))
        # Grouped by the one key they pick: PostgreSQL shows no column outside an aggregate
        # or the GROUP BY (no rows: no group, the zero tally).
        mine = await self._tally(
            _TALLY.format(key="account") + " WHERE account = ? GROUP BY account", (account,))
        here = await self._tally(
            _TALLY.format(key="thread_id") + " WHERE thread_id = ? GROUP BY thread_id",
            (thread_id,))
        named: list[Tally] = []
        for other in apart:
            if other != account:
                tally = await self._tally(
                    _TALLY.format(key="account") + " WHERE account = ? GROUP BY account",
                    (other,))
                named.append(Tally(other, tally.messages, tally.tokens))
        known = (account, *apart)
        others = await self._group(
            "account", f"account NOT IN ({', '.join('?' * len(known))})", known)
        other_threads = await self._group("thread_id", "thread_id != ?", (thread_id,))
        return Stats(since, total, accounts, threads,
                     Tally(account, mine.messages, mine.tokens),
                     Tally(thread_id, here.messages, here.tokens),
                     named, others, other_threads)

    async def _group(self, key: str, where: str, params: tuple[object, ...]) -> Group:
        row = await self.db.fetchone(
            f"SELECT COUNT(DISTINCT {key}) AS n,"
            " SUM(CASE WHEN kind = 'message' THEN 1 ELSE 0 END) AS messages,"
            f" SUM(prompt_tokens + completion_tokens) AS tokens FROM usage WHERE {where}",
            params)
        if row is None:
            return Group(0, 0, 0)
        return Group(int(row["n"] or 0), int(row["messages"] or 0), int(row["tokens"] or 0))

    async def _tallies(self, sql: str, params: tuple[object, ...]) -> list[Tally]:
        rows = await self.db.fetchall(sql, params)
        return [Tally(str(r["key"]), int(r["messages"] or 0), int(r["tokens"] or 0))
                for r in rows if r["key"] is not None]

    async def _tally(self, sql: str, params: tuple[object, ...]) -> Tally:
        rows = await self._tallies(sql, params)
        return rows[0] if rows else Tally("", 0, 0)
