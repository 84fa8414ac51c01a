"""Catch-up for the Matrix interface: what a sync timeline left out, and what a room said
between the bot's invite and its join.

When more happened in a room while the bot was away than a sync returns at once, the
homeserver sends only the newest events and marks the timeline ``limited``. Messages in the
gap would be lost. ``missed_events`` pages back from the timeline's ``prev_batch`` to the
token of the sync before (the homeserver stops there), and stops early at a message already
on the bus (everything older was seen), the bot's own invite (nothing older was meant for
it), or ``MAX_EVENTS`` (logged: older ones are skipped). Events come back oldest first,
decrypted by nio where it holds the keys, to be handled exactly like timeline events; the
inbox drops any it already has.

A client's "start chat" creates the room, invites the bot and sends the first message before
the bot has joined: what was said after the invite was meant for the bot. The sync of the
join holds the room's recent timeline (``split_at_join``, ``since_invite``; ``invite_gap``
pages back when that timeline is limited); the newest ``SINCE_INVITE_MAX`` messages of it are
answered, what came before the invite never is.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nio import (
    AsyncClient,
    MegolmEvent,
    MessageDirection,
    RoomMemberEvent,
    RoomMessagesError,
    RoomMessageText,
)

from ganglion.interfaces.matrix.attachments import is_media
from ganglion.interfaces.matrix.session import HomeserverUnavailable, http_status, retryable

log = logging.getLogger(__name__)

PAGE = 100
MAX_EVENTS = 1000
SINCE_INVITE_MAX = 10
"""Messages written between the bot's invite and its join answered at most (the newest)."""
INVITE_PAGES = 3
"""Pages read back, at most, for an invite older than a join's timeline."""
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
            if getattr(event, "event_id", None) in seen or is_own_invite(event, own_id):
                return missed[::-1]
            missed.append(event)
        token = resp.end if resp.chunk and resp.end != token else None
    else:
        if token is not None:
            log.warning("[%s] more than %d events came while the bot was away; older ones "
                        "are skipped", room_id, MAX_EVENTS)
    if missed:
        log.info("[%s] fetched %d event(s) a limited sync left out", room_id, len(missed))
    return missed[::-1]


def split_at_join(events: list[Any], own_id: str) -> tuple[list[Any], list[Any]] | None:
    """(before, after) the bot's own join, if it joined in this batch; else None."""
    for i in range(len(events) - 1, -1, -1):
        if is_own_join(events[i], own_id):
            return events[:i], events[i + 1:]
    return None


def since_invite(before: list[Any], own_id: str) -> tuple[list[Any], bool]:
    """Of the events before the bot's join (oldest first), those after its latest invite,
    and whether that invite was among them."""
    for i in range(len(before) - 1, -1, -1):
        if is_own_invite(before[i], own_id):
            return before[i + 1:], True
    return [], False


async def invite_gap(client: AsyncClient, room_id: str, prev_batch: str, *,
                     own_id: str) -> list[Any] | None:
    """What the room said between the bot's invite and the start of a limited join timeline,
    oldest first: paged back from ``prev_batch`` to the invite, at most ``INVITE_PAGES``
    pages; None when the invite is not within reach (or the room may not be read back).

    Raises HomeserverUnavailable when the homeserver fails to answer (the sync is read again).
    """
    found: list[Any] = []
    token: str | None = prev_batch
    for _ in range(INVITE_PAGES):
        if token is None:
            break
        resp = await client.room_messages(room_id, start=token,
                                          direction=MessageDirection.back, limit=PAGE,
                                          message_filter=GAP_FILTER)
        if isinstance(resp, RoomMessagesError):
            if retryable(http_status(resp)):
                raise HomeserverUnavailable(f"messages of {room_id}: {resp}")
            log.warning("[%s] could not read what was said since the invite: %s", room_id,
                        resp)
            return None
        for event in resp.chunk:  # newest first
            if is_own_invite(event, own_id):
                return found[::-1]
            found.append(event)
        token = resp.end if resp.chunk and resp.end != token else None
    return None


async def said_since_invite(client: AsyncClient, room_id: str, timeline: Any,
                            before: list[Any], own_id: str) -> list[Any]:
    """What the room said between the bot's invite and its join (the first message of a
    "start chat" comes before the bot joins), bounded; what came before the invite is
    history, never answered (what of it stays unreadable is one log line:
    ``DecryptionWarnings``)."""
    said, found = since_invite(before, own_id)
    if not found and timeline.limited and timeline.prev_batch:
        gap = await invite_gap(client, room_id, timeline.prev_batch, own_id=own_id)
        if gap is not None:
            said = [*gap, *before]
    return newest_messages(said, SINCE_INVITE_MAX)


def newest_messages(events: list[Any], limit: int) -> list[Any]:
    """``events`` (oldest first) but messages older than the ``limit`` newest ones."""
    kept: list[Any] = []
    messages = 0
    for event in reversed(events):
        if isinstance(event, RoomMessageText | MegolmEvent) or is_media(event):
            messages += 1
            if messages > limit:
                break
        kept.append(event)
    return kept[::-1]


def is_own_join(event: Any, own_id: str) -> bool:
    return (isinstance(event, RoomMemberEvent) and event.state_key == own_id
            and event.membership == "join"
            and (event.prev_membership or "leave") != "join")  # not a profile change


def is_own_invite(event: Any, own_id: str) -> bool:
    return (isinstance(event, RoomMemberEvent) and event.state_key == own_id
            and event.membership == "invite")
