"""Reminders and the heartbeat's token ledger in SQLite; data/reminders.json mirrors the reminders.

The ``reminders`` table is the source of truth: the scheduler asks it what is due
(``due``) and when to wake next (``next_due_at``), so nothing is held in memory that a crash
could lose. The JSON mirror is for people reading ``data/``; editing it changes nothing.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, tzinfo
from pathlib import Path
from typing import Any

from ganglion.durations import duration_text
from ganglion.messages import ThreadId
from ganglion.storage.atomic import atomic_write
from ganglion.storage.backend import Backend

ACTIVE, DONE, CANCELLED = "active", "done", "cancelled"
MIRROR_MAX = 5000
"""The mirror lists the soonest reminders up to this many (and counts the rest): it is for
reading, and rewriting a huge file on every change would cost more than it tells."""


@dataclass(frozen=True, slots=True)
class Reminder:
    """One reminder row. Times are unix seconds; local times are only made for display."""

    id: int
    thread_id: ThreadId
    """The conversation it was set in; a thread-bound reminder is delivered there."""
    text: str
    system: bool
    """True: an autonomous turn with ``text`` as its instruction, delivered to no chat."""
    next_at: float | None
    """When it fires next; None once done or cancelled."""
    cron: str | None
    """Standard 5-field crontab, read in the scheduler's time zone."""
    every_seconds: float | None
    status: str
    created_at: float
    created_by: str
    fired: int
    last_fired_at: float | None


@dataclass(frozen=True, slots=True)
class NewReminder:
    thread_id: ThreadId
    text: str
    next_at: float
    system: bool = False
    cron: str | None = None
    every_seconds: float | None = None
    created_by: str = ""


def _row(r: sqlite3.Row) -> Reminder:
    return Reminder(
        id=r["id"], thread_id=ThreadId(r["thread_id"]), text=r["text"], system=bool(r["system"]),
        next_at=r["next_at"], cron=r["cron"], every_seconds=r["every_seconds"],
        status=r["status"], created_at=r["created_at"], created_by=r["created_by"],
        fired=r["fired"], last_fired_at=r["last_fired_at"],
    )


def repeat_text(r: Reminder) -> str:
    """The recurrence in words: ``once``, ``every 2 h``, ``cron 0 9 * * 1-5``."""
    if r.cron is not None:
        return f"cron {r.cron}"
    if r.every_seconds is not None:
        return "every " + duration_text(r.every_seconds)
    return "once"


class ReminderStore:
    """Plain SQL behind verbs; ``write_mirror`` rewrites data/reminders.json atomically."""

    def __init__(self, db: Backend, mirror: Path, tz: tzinfo) -> None:
        self.db = db
        self.mirror = mirror
        self.tz = tz
        self._mirror_lock = asyncio.Lock()
        self._changes = 0
        self._mirrored = -1

    async def add(self, new: NewReminder) -> Reminder:
        (rid,) = await self.add_many([new])
        reminder = await self.get(rid)
        assert reminder is not None
        return reminder

    async def add_many(self, news: Sequence[NewReminder]) -> list[int]:
        """Their ids, all stored in one transaction."""
        ids: list[int] = []
        now = time.time()
        async with self.db.transaction(after_commit=self._changed) as conn:
            for n in news:
                cur = await conn.execute(
                    "INSERT INTO reminders (thread_id, text, system, cron, every_seconds, next_at,"
                    " created_by, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (n.thread_id, n.text, int(n.system), n.cron, n.every_seconds, n.next_at,
                     n.created_by, now),
                )
                assert cur.lastrowid is not None
                ids.append(cur.lastrowid)
        return ids

    def _changed(self) -> None:
        """Counted once committed, also when the caller was cancelled meanwhile: the mirror
        must follow the rows."""
        self._changes += 1

    def changed_elsewhere(self) -> None:
        """Rows were changed by another verb (a conversation deleted with its reminders)."""
        self._changed()

    async def get(self, reminder_id: int) -> Reminder | None:
        r = await self.db.fetchone("SELECT * FROM reminders WHERE id = ?", (reminder_id,))
        return _row(r) if r is not None else None

    async def active(self, limit: int = -1) -> list[Reminder]:
        """Every active reminder (or the first ``limit``), soonest first."""
        sql = "SELECT * FROM reminders WHERE status = 'active' ORDER BY next_at, id"
        rows = await (self.db.fetchall(sql + " LIMIT ?", (limit,)) if limit >= 0
                      else self.db.fetchall(sql))
        return [_row(r) for r in rows]

    async def count_active(self) -> int:
        row = await self.db.fetchone("SELECT count(*) AS n FROM reminders WHERE status = 'active'")
        return int(row["n"]) if row is not None else 0

    async def next_due_at(self) -> float | None:
        """The earliest next firing of any active reminder (the index answers it)."""
        row = await self.db.fetchone(
            "SELECT min(next_at) AS t FROM reminders WHERE status = 'active'"
        )
        return float(row["t"]) if row is not None and row["t"] is not None else None

    async def times_counted(self, client_ids: Sequence[str]) -> dict[str, int]:
        """Of these firings, those already in the inbox that counted their scheduled times
        exactly, with that count (``missed`` in their meta)."""
        if not client_ids:
            return {}
        rows = await self.db.fetchall(
            "SELECT client_id, meta FROM inbox WHERE source = 'reminder' AND client_id IN"
            f" ({','.join('?' * len(client_ids))})", tuple(client_ids))
        metas = {r["client_id"]: json.loads(r["meta"] or "{}") for r in rows}
        return {cid: int(m.get("missed", "1")) for cid, m in metas.items()
                if m.get("exact", "1") == "1"}

    async def due(self, now: float, limit: int = 500) -> list[Reminder]:
        """Active reminders whose time has come, oldest first."""
        rows = await self.db.fetchall(
            "SELECT * FROM reminders WHERE status = 'active' AND next_at <= ?"
            " ORDER BY next_at, id LIMIT ?",
            (now, limit),
        )
        return [_row(r) for r in rows]

    async def due_before(self, until: float) -> list[Reminder]:
        """Active reminders that fire before ``until`` (what a heartbeat review may mention)."""
        rows = await self.db.fetchall(
            "SELECT * FROM reminders WHERE status = 'active' AND next_at < ?"
            " ORDER BY next_at, id LIMIT 50",
            (until,),
        )
        return [_row(r) for r in rows]

    async def advance(
        self, moves: Sequence[tuple[int, float, float | None]], fired_at: float
    ) -> None:
        """After firing: each (reminder id, fired for, next time) moves on to its next time,
        or is done when that is None; all in one transaction.

        Only a row still active and still due at "fired for" changes (a reminder cancelled
        meanwhile stays cancelled).
        """
        async with self.db.transaction(after_commit=self._changed) as conn:
            await conn.executemany(
                "UPDATE reminders SET next_at = ?, status = ?, fired = fired + 1,"
                " last_fired_at = ? WHERE id = ? AND status = 'active' AND next_at = ?",
                [(next_at, ACTIVE if next_at is not None else DONE, fired_at, rid, fired_for)
                 for rid, fired_for, next_at in moves],
            )

    async def cancel(self, reminder_id: int) -> bool:
        async with self.db.transaction(after_commit=self._changed) as conn:
            cur = await conn.execute(
                "UPDATE reminders SET status = 'cancelled', next_at = NULL"
                " WHERE id = ? AND status = 'active'",
                (reminder_id,),
            )
            return cur.rowcount == 1

    async def write_mirror(self) -> None:
        """Rewrite data/reminders.json if anything changed since it was last written.

        Concurrent callers coalesce: one write covers every change made before it started.
        """
        async with self._mirror_lock:
            if self._mirrored == self._changes and self.mirror.exists():
                return
            target = self._changes
            reminders = await self.active(MIRROR_MAX)
            more = await self.count_active() - len(reminders) if len(reminders) == MIRROR_MAX else 0
            await asyncio.to_thread(
                lambda: atomic_write(self.mirror, self._mirror_text(reminders, more), 0o600))
            self._mirrored = target

    def _mirror_text(self, reminders: list[Reminder], more: int) -> str:
        def local(ts: float | None) -> str | None:
            return None if ts is None else datetime.fromtimestamp(ts, self.tz).isoformat(
                timespec="seconds")

        doc: dict[str, Any] = {
            "note": "A copy of the reminders table in conversation.db, rewritten on every "
                    "change. Editing this file changes nothing; ask the assistant, or use "
                    "/reminders.",
            "timezone": str(self.tz),
            "written_at": local(time.time()),
            "reminders": [
                {
                    "id": r.id,
                    "next": local(r.next_at),
                    "repeat": repeat_text(r),
                    "kind": "system" if r.system else "thread-bound",
                    "thread": r.thread_id,
                    "text": r.text,
                    "fired": r.fired,
                    "created": local(r.created_at),
                }
                for r in reminders
            ],
        }
        if more:
            doc["more"] = f"{more} later reminders are not listed here; /reminders counts them"
        return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


class HeartbeatLedger:
    """Tokens spent by heartbeat reviews per local day, and which threads to review."""

    def __init__(self, db: Backend) -> None:
        self.db = db

    async def add(self, day: str, tokens: int) -> int:
        """Count one review of ``tokens`` on ``day``; returns the day's new total."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO heartbeat_usage (day, tokens, reviews) VALUES (?, ?, 1)"
                " ON CONFLICT (day) DO UPDATE SET"
                " tokens = heartbeat_usage.tokens + excluded.tokens,"
                " reviews = heartbeat_usage.reviews + 1",
                (day, tokens),
            )
            async with conn.execute(
                "SELECT tokens FROM heartbeat_usage WHERE day = ?", (day,)
            ) as cur:
                row = await cur.fetchone()
        return int(row["tokens"]) if row is not None else tokens

    async def spent(self, day: str) -> tuple[int, int]:
        """(tokens, reviews) of ``day``."""
        row = await self.db.fetchone(
            "SELECT tokens, reviews FROM heartbeat_usage WHERE day = ?", (day,)
        )
        return (int(row["tokens"]), int(row["reviews"])) if row is not None else (0, 0)

    async def mark_budget_noticed(self, day: str) -> bool:
        """True the first time it is called for ``day`` (the "budget reached" notice is due)."""
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO heartbeat_usage (day) VALUES (?) ON CONFLICT (day) DO NOTHING",
                (day,),
            )
            cur = await conn.execute(
                "UPDATE heartbeat_usage SET budget_noticed = 1"
                " WHERE day = ? AND budget_noticed = 0",
                (day,),
            )
            return cur.rowcount == 1

    async def active_threads(self, since: float) -> list[ThreadId]:
        """Threads where a person wrote since ``since`` (unix time), most recent first."""
        rows = await self.db.fetchall(
            "SELECT thread_id, max(created_at) AS last FROM inbox"
            " WHERE created_at >= ? AND source IN ('web', 'matrix')"
            " GROUP BY thread_id ORDER BY last DESC",
            (since,),
        )
        return [ThreadId(r["thread_id"]) for r in rows]

    async def owner_thread(self, since: float, owner: str | None) -> ThreadId | None:
        """The conversation where the owner wrote last since ``since``: a web tab (the web UI
        acts as the owner) or a Matrix room where ``owner`` (matrix.owner) wrote; or None."""
        row = await self.db.fetchone(
            "SELECT thread_id FROM inbox WHERE created_at >= ?"
            " AND (source = 'web' OR (source = 'matrix' AND sender = ?))"
            " ORDER BY created_at DESC, id DESC LIMIT 1",
            (since, owner or ""),
        )
        return ThreadId(row["thread_id"]) if row else None

    async def review_pending(self, thread_id: ThreadId) -> bool:
        """A review of this thread is queued or running already."""
        row = await self.db.fetchone(
            "SELECT 1 FROM inbox WHERE status = 'pending' AND thread_id = ?"
            " AND source = 'heartbeat' LIMIT 1",
            (thread_id,),
        )
        return row is not None
