"""Retention: prunes what conversation.db needs only for a while, at start and then daily."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ganglion.storage.backend import Backend
from ganglion.storage.media import MediaStore

log = logging.getLogger(__name__)

DAY = 86_400.0
BATCH = 500
"""Rows per batch: each batch commits on its own, so a turn never waits long behind pruning."""

# Which rows: ids after a watermark, older than the cutoff, a batch at most.
_OLD_INBOX = (
    # Answered, and no reply still waits for delivery (the router links it to the question
    # by the inbox row).
    "SELECT id FROM inbox i WHERE id > ? AND status = 'done' AND done_at < ?"
    " AND NOT EXISTS (SELECT 1 FROM messages m JOIN outbox o ON o.message_id = m.id"
    " WHERE m.inbox_id = i.id AND o.delivered_at IS NULL) ORDER BY id LIMIT ?"
)
_OLD_OUTBOX = (
    # Delivered is done: the message itself stays in history.
    "SELECT id FROM outbox WHERE id > ? AND delivered_at < ? ORDER BY id LIMIT ?"
)


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one pass dropped: inbox rows (their keys kept), tool steps, outbox rows, media
    files (their rows kept)."""

    inbox: int = 0
    steps: int = 0
    outbox: int = 0
    media: int = 0


class Retention:
    """Prunes rows older than ``keep_days`` in small batches; owns its daily task."""

    def __init__(
        self,
        db: Backend,
        keep_days: int | None,
        *,
        batch: int = BATCH,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        media: MediaStore | None = None,
        media_days: int | None = None,
    ) -> None:
        self.db = db
        self.keep_days = keep_days
        self.media = media
        self.media_days = media_days
        """data/media/'s files unused this long go (``media.keep_days``); None keeps them."""
        self.batch = batch
        self.clock = clock
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Prune now (beside the rest of the start, not before it) and then once a day."""
        if self.keep_days is not None or (self.media and self.media_days is not None):
            self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                started = time.monotonic()
                pruned = await self.prune()
                log.info("retention: %d answered messages (their ids kept), %d tool steps,"
                         " %d delivered outbox rows and %d media files pruned in %.2f s",
                         pruned.inbox, pruned.steps, pruned.outbox, pruned.media,
                         time.monotonic() - started)
            except asyncio.CancelledError:
                raise
            except Exception:  # a full or locked disk: tomorrow's pass takes what is left
                log.exception("retention: pruning failed; next try in a day")
            await self._sleep(DAY)

    async def prune(self, now: float | None = None) -> Pruned:
        """One pass over every kind, older than ``keep_days`` before ``now``."""
        now = self.clock() if now is None else now
        media = (await self.media.prune(self.media_days, now)
                 if self.media is not None and self.media_days is not None else 0)
        if self.keep_days is None:
            return Pruned(media=media)
        cutoff = now - self.keep_days * DAY
        outbox = await self._in_batches(_OLD_OUTBOX, cutoff, self._drop_outbox)
        steps: list[int] = []
        inbox = await self._in_batches(
            _OLD_INBOX, cutoff, lambda ids: self._drop_inbox(ids, steps))
        return Pruned(inbox=inbox, steps=sum(steps), outbox=outbox, media=media)

    async def _drop_outbox(self, ids: list[int]) -> int:
        marks = ",".join("?" * len(ids))
        cur = await self.db.write(
            f"DELETE FROM outbox WHERE id IN ({marks}) AND delivered_at IS NOT NULL", tuple(ids))
        return cur.rowcount

    async def _drop_inbox(self, ids: list[int], steps: list[int]) -> int:
        """Answered inbox rows go, their key kept in inbox_pruned: a resent id, however late,
        is still known (exactly once). History stays; its link to the row goes. So do tool
        steps a turn left (finish_turn drops its own; these belong to a message answered by
        another way, such as a Stop that lost the race)."""
        marks = ",".join("?" * len(ids))
        async with self.db.transaction() as conn:
            await conn.execute(
                "INSERT INTO inbox_pruned (thread_id, client_id)"
                f" SELECT thread_id, client_id FROM inbox WHERE id IN ({marks})"
                " ON CONFLICT DO NOTHING", ids)
            # The history message keeps what it attached (the transcript shows it).
            await conn.execute(
                "INSERT INTO message_media (message_id, seq, media_id)"
                " SELECT m.id, r.seq, r.media_id FROM media_refs r JOIN messages m"
                f" ON m.inbox_id = r.inbox_id AND m.role = 'user' WHERE r.inbox_id IN ({marks})"
                " ON CONFLICT DO NOTHING", ids)
            await conn.execute(
                f"UPDATE messages SET inbox_id = NULL WHERE inbox_id IN ({marks})", ids)
            cur = await conn.execute(f"DELETE FROM turn_steps WHERE inbox_id IN ({marks})", ids)
            steps.append(cur.rowcount)
            # What the message attached: the files go by media.keep_days, on their own.
            await conn.execute(f"DELETE FROM media_refs WHERE inbox_id IN ({marks})", ids)
            cur = await conn.execute(f"DELETE FROM inbox WHERE id IN ({marks})", ids)
            return cur.rowcount

    async def _in_batches(
        self, select: str, cutoff: float, drop: Callable[[list[int]], Awaitable[int]]
    ) -> int:
        dropped, after = 0, 0
        while True:
            rows = await self.db.fetchall(select, (after, cutoff, self.batch))
            if not rows:
                return dropped
            ids = [int(r[0]) for r in rows]
            dropped += await drop(ids)
            after = ids[-1]  # the watermark: rows kept (pending, newer) are not read again
