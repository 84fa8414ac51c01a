"""Catch-up for the Matrix interface: the events a "limited" sync timeline left out.

When more happened in a room while the bot was away than a sync returns at once, the
homeserver sends only the newest events and marks the timeline ``limited``. Messages in the
gap would be lost. ``missed_events`` pages back from the timeline's ``prev_batch`` to the
token of the sync before (the homeserver stops there), and stops early at a message already
on the bus (everything older was seen), the bot's own join (nothing older was meant for it;
``after_own_join`` cuts a timeline that holds it), or ``MAX_EVENTS`` (logged: older ones are
skipped). Events come back oldest first,
decrypted by nio where it holds the keys, to be handled exactly like timeline events; the
inbox drops any it already has.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nio import AsyncClient, MessageDirection, RoomMemberEvent, RoomMessagesError

from ganglion.interfaces.matrix.session import HomeserverUnavailable, http_status, retryable

log = logging.getLogger(__name__)

PAGE = 100
MAX_EVENTS = 1000
GAP_FILTER = {"types": ["m.room.message", "m.room.encrypted", "m.room.member"]}

Known = Callable[[list[str]], Awaitable[set[str]]]
"""Of these event ids, the ones already on the bus."""


async def missed_events(client: AsyncClient, room_id: str, prev_batch: str, since: str, *,
                        own_id: str, known: Known) -> list[Any]:
    """The room's events between ``since`` (the last sync's token) and ``prev_batch``,
    oldest first.

    Raises HomeserverUnavailable when the homeserver fails to answer (the sync is read
    again later); a refusal for good (the bot may no longer read the room) is logged.
    """
    missed: list[Any] = []
    token: str | None = prev_batch
    while token is not None and len(missed) < MAX_EVENTS:
        resp = await client.room_messages(room_id, start=token, end=since,
                                          direction=MessageDirection.back, limit=PAGE,
                                          message_filter=GAP_FILTER)
        if isinstance(resp, RoomMessagesError):
            if retryable(http_status(resp)):
                raise HomeserverUnavailable(f"messages of {room_id}: {resp}")
            log.warning("[%s] could not fetch the messages a limited sync left out: %s",
                        room_id, resp)
            break
        seen = await known([e.event_id for e in resp.chunk if hasattr(e, "event_id")])
        for event in resp.chunk:  # newest first
            if getattr(event, "event_id", None) in seen or is_own_join(event, own_id):
                return missed[::-1]
            missed.append(event)
        token = resp.end if resp.chunk and resp.end != token else None
    else:
        if token is not None:
            log.warning("[%s] more than %d events came while the bot was away; older ones "
                        "are skipped", room_id, MAX_EVENTS)
    return missed[::-1]


def after_own_join(events: list[Any], own_id: str) -> list[Any] | None:
    """The events after the bot's own join, if it joined in this batch; else None.

    What a room said before the bot joined is history, not addressed to it: a newly joined
    room's first timeline (which Synapse fills with events from before the join) is cut here.
    """
    for i in range(len(events) - 1, -1, -1):
        if is_own_join(events[i], own_id):
            return events[i + 1:]
    return None


def is_own_join(event: Any, own_id: str) -> bool:
    return (isinstance(event, RoomMemberEvent) and event.state_key == own_id
            and event.membership == "join"
            and (event.prev_membership or "leave") != "join")  # not a profile change
