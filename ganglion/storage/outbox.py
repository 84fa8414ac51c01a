"""The outbox: final messages waiting for their interface; delivered in order, marked once sent."""

from __future__ import annotations

import time

from ganglion.messages import ThreadId
from ganglion.storage.backend import Backend
from ganglion.storage.history import StoredMessage, row_to_message


class Outbox:
    def __init__(self, db: Backend) -> None:
        self.db = db

    async def pending(self, thread_id: ThreadId) -> list[tuple[int, StoredMessage]]:
        """(outbox id, message) not yet delivered for this thread, oldest first."""
        rows = await self.db.fetchall(
            "SELECT o.id AS outbox_id, m.* FROM outbox o JOIN messages m ON m.id = o.message_id"
            " WHERE o.thread_id = ? AND o.delivered_at IS NULL ORDER BY o.id",
            (thread_id,),
        )
        return [(r["outbox_id"], row_to_message(r)) for r in rows]

    async def threads_with_pending(self) -> list[ThreadId]:
        rows = await self.db.fetchall(
            "SELECT DISTINCT thread_id FROM outbox WHERE delivered_at IS NULL"
        )
        return [ThreadId(r["thread_id"]) for r in rows]

    async def mark_delivered(self, outbox_ids: list[int]) -> None:
        if not outbox_ids:
            return
        marks = ",".join("?" * len(outbox_ids))
        await self.db.write(
            f"UPDATE outbox SET delivered_at = ? WHERE id IN ({marks}) AND delivered_at IS NULL",
            (time.time(), *outbox_ids),
        )
