"""What a person sees of a message the bot accepted: a read receipt, and the ack reaction.

Once a message is on the bus (queued or running) and not answered within ``delay`` seconds,
the bot marks it read, so the sender's client shows it was seen, and, with
``matrix.ack_reaction`` set, reacts to it (e.g. "👀"). A quicker answer needs neither: clients
take a person's own message as read up to it, and a reaction would come and go at once; each
would cost a homeserver request (and the homeserver's time) in the middle of the turn. The
reaction is redacted when the turn is over or its answer delivered, whichever comes first to
succeed. All best effort: a request that fails is logged, never retried (the answer
is what counts). The reaction's transaction id comes from the inbox id, so a second try of
the same message never reacts twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any

from nio import AsyncClient, RoomReadMarkersError, RoomRedactError, RoomSendError

log = logging.getLogger(__name__)

ACKS_KEPT = 1000
DELAY = 0.5
"""Seconds an accepted message waits for its answer before it is marked read (as typing)."""


class Receipts:
    def __init__(self, client: Callable[[], AsyncClient | None], reaction: str, tx_prefix: str,
                 spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self._client = client
        self.reaction = reaction
        self.tx_prefix = tx_prefix
        self._spawn = spawn
        self.delay = DELAY
        self._acks: dict[int, tuple[str, asyncio.Task[str | None]]] = {}
        """Inbox id -> (room, the task marking it read and reacting to it, whose result is
        the reaction's id), until its turn is done."""
        self._delayed: set[int] = set()
        """Inbox ids whose task still waits out ``delay`` (nothing sent yet)."""
        self._running: set[asyncio.Task[str | None]] = set()

    def accepted(self, room_id: str, event_id: str, inbox_id: int) -> None:
        """The message ``event_id`` is stored as inbox row ``inbox_id``."""
        task = asyncio.create_task(self._accept(room_id, event_id, inbox_id),
                                   name=f"matrix-ack-{inbox_id}")
        self._delayed.add(inbox_id)
        self._acks[inbox_id] = (room_id, task)
        while len(self._acks) > ACKS_KEPT:
            self._acks.pop(next(iter(self._acks)))[1].cancel()
        self._running.add(task)
        task.add_done_callback(self._running.discard)

    def done(self, inbox_id: int) -> None:
        """The turn of ``inbox_id`` is over (or its answer is in the room)."""
        ack = self._acks.pop(inbox_id, None)
        if ack is None:
            return
        if inbox_id in self._delayed:  # answered before anything was sent: nothing to send
            self._delayed.discard(inbox_id)
            ack[1].cancel()
        elif self.reaction:
            self._spawn(self._unreact(inbox_id, *ack))

    async def stop(self) -> None:
        for task in self._running:
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)

    async def _accept(self, room_id: str, event_id: str, inbox_id: int) -> str | None:
        try:
            await asyncio.sleep(self.delay)
        finally:
            self._delayed.discard(inbox_id)
        client = self._client()
        if client is None:
            return None
        try:
            resp = await client.room_read_markers(room_id, fully_read_event=event_id,
                                                  read_event=event_id)
            if isinstance(resp, RoomReadMarkersError):
                log.info("[%s] read receipt not sent: %s", room_id, resp)
            if not self.reaction:
                return None
            content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id,
                                        "key": self.reaction}}
            sent = await client.room_send(room_id, "m.reaction", content,
                                          tx_id=f"{self.tx_prefix}-{inbox_id}-ack",
                                          ignore_unverified_devices=True)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.info("[%s] read receipt or reaction not sent: %s", room_id, err)
            return None
        if isinstance(sent, RoomSendError):
            log.info("[%s] reaction not sent: %s", room_id, sent)
            return None
        reaction_id: str = sent.event_id
        return reaction_id

    async def _unreact(self, inbox_id: int, room_id: str,
                       task: asyncio.Task[str | None]) -> None:
        reaction_id = await _wait(task)
        client = self._client()
        if reaction_id is None:
            return
        if client is not None:
            try:
                resp = await client.room_redact(room_id, reaction_id)
            except asyncio.CancelledError:
                raise
            except Exception as err:
                resp = RoomRedactError(str(err))
            if not isinstance(resp, RoomRedactError):
                return
            log.info("[%s] reaction %s not removed yet: %s", room_id, reaction_id, resp)
        self._acks.setdefault(inbox_id, (room_id, task))  # the delivery of the answer retries


async def _wait(task: asyncio.Task[str | None]) -> str | None:
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        if task.cancelled():
            return None
        raise
