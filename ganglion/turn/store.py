"""Storing a finished turn: answer, tool exchange, "answered" in one transaction; delivery."""

from __future__ import annotations

import asyncio
import logging
import sqlite3

from ganglion.messages import Inbound, Outbound, OutKind, Role
from ganglion.router import Router
from ganglion.storage.history import History, NewMessage
from ganglion.turn.progress import Progress

log = logging.getLogger(__name__)

STORE_RETRY_FIRST = 0.5
STORE_RETRY_MAX = 30.0
"""Seconds between attempts to store a finished turn while the disk refuses writes."""


def notice(msg: Inbound, text: str) -> NewMessage:
    """A message of the turn for the user only: shown and kept, never in the model's context."""
    return NewMessage("notice", text, in_context=False, deliver=not msg.system)


class TurnStore:
    """Ends a turn: its outcome stored (all or nothing), its replies delivered, its tabs idle."""

    def __init__(self, history: History, router: Router, progress: Progress) -> None:
        self.history = history
        self.router = router
        self.progress = progress

    async def finish(
        self, msg: Inbound, new: list[NewMessage], idle: bool = True, failed: bool = False
    ) -> None:
        await self._store(msg, new)
        try:
            await self.router.deliver(msg.thread_id)
        except sqlite3.Error as err:  # stored, so it is sent with the thread's next delivery
            log.warning("[%s] could not mark a delivery: %s", msg.thread_id, err)
        if idle:
            if failed:  # after its notice: the web page shows an error state until the next turn
                await self.progress.state(msg.thread_id, "error")
            await self.progress.state(msg.thread_id, "idle")

    async def _store(self, msg: Inbound, new: list[NewMessage]) -> None:
        """Store the turn's outcome, waiting for a disk that refuses writes to accept them
        again (the thread's later messages wait behind it; a stop leaves it unanswered, so
        the next start runs it again). The user is told once, without storing anything."""
        delay = STORE_RETRY_FIRST
        told = False
        while True:
            try:
                await self.history.finish_turn(msg.thread_id, msg.id, new)
                return
            except sqlite3.Error as err:
                log.error("[%s] could not store the turn's answer (%s); retrying in %.1f s",
                          msg.thread_id, err, delay)
                if not told and not msg.system:
                    told = True
                    await self.router.publish(Outbound(
                        msg.thread_id, OutKind.MESSAGE, role=Role.SYSTEM,
                        text=f"I could not store my answer ({err}): the data folder refuses "
                             "writes (full or read-only?). I will keep trying and send the "
                             "answer once it can be stored."))
            await asyncio.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_MAX)
