"""Retention: prunes what conversation.db needs only for a while, at start and then daily."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ganglion.storage.db import Database

log = logging.getLogger(__name__)

DAY = 86_400.0
BATCH = 500
"""Rows per statement: each commits on its own, so a turn never waits long behind pruning."""

# Each pair: which rows (ids after a watermark, older than the cutoff, a batch at most), and
# what to do with them (the condition again: a row may have changed in between).
_INBOX = (
    # Answered messages keep their row, reduced to the dedup key (thread_id, client_id): a
    # resent id must be known for ever (exactly once), and history's rows refer to it. The
    # text is in history already; what goes is that copy and the meta.
    "SELECT id FROM inbox WHERE id > ? AND status = 'done' AND done_at < ?"
    " AND (text != '' OR meta != '{}') ORDER BY id LIMIT ?",
    "UPDATE inbox SET text = '', meta = '{}' WHERE id IN ({ids}) AND status = 'done'",
)
_STEPS = (
    # Tool steps are read only to resume an unanswered message; finish_turn drops them with
    # the answer, so what is left belongs to a message answered by another way.
    "SELECT s.rowid FROM turn_steps s JOIN inbox i ON i.id = s.inbox_id"
    " WHERE s.rowid > ? AND i.status = 'done' AND i.done_at < ? ORDER BY s.rowid LIMIT ?",
    "DELETE FROM turn_steps WHERE rowid IN ({ids})",
)
_OUTBOX = (
    # Delivered is done: the message itself stays in history.
    "SELECT id FROM outbox WHERE id > ? AND delivered_at < ? ORDER BY id LIMIT ?",
    "DELETE FROM outbox WHERE id IN ({ids}) AND delivered_at IS NOT NULL",
)


@dataclass(frozen=True, slots=True)
class Pruned:
    """What one pass changed: inbox rows reduced to their key, steps and outbox rows gone."""

    inbox: int = 0
    steps: int = 0
    outbox: int = 0


class Retention:
    """Prunes rows older than ``keep_days`` in small batches; owns its daily task."""

    def __init__(
        self,
        db: Database,
        keep_days: int | None,
        *,
        batch: int = BATCH,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.db = db
        self.keep_days = keep_days
        self.batch = batch
        self.clock = clock
        self._sleep = sleep
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Prune now (beside the rest of the start, not before it) and then once a day."""
        if self.keep_days is not None:
            self._task = asyncio.create_task(self._run(), name="retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            try:
                pruned = await self.prune()
                log.info("retention: %d answered messages reduced to their id, %d tool steps"
                         " and %d delivered outbox rows pruned", pruned.inbox, pruned.steps,
                         pruned.outbox)
            except asyncio.CancelledError:
                raise
            except Exception:  # a full or locked disk: tomorrow's pass takes what is left
                log.exception("retention: pruning failed; next try in a day")
            await self._sleep(DAY)

    async def prune(self, now: float | None = None) -> Pruned:
        """One pass over every kind, older than ``keep_days`` before ``now``."""
        if self.keep_days is None:
            return Pruned()
        cutoff = (self.clock() if now is None else now) - self.keep_days * DAY
        return Pruned(inbox=await self._in_batches(*_INBOX, cutoff),
                      steps=await self._in_batches(*_STEPS, cutoff),
                      outbox=await self._in_batches(*_OUTBOX, cutoff))

    async def _in_batches(self, select: str, change: str, cutoff: float) -> int:
        changed, after = 0, 0
        while True:
            rows = await self.db.fetchall(select, (after, cutoff, self.batch))
            if not rows:
                return changed
            ids = [int(r[0]) for r in rows]
            marks = ",".join("?" * len(ids))
            cur = await self.db.write(change.replace("{ids}", marks), tuple(ids))
            changed += cur.rowcount
            after = ids[-1]  # the watermark: rows kept (pending, newer) are not read again
