"""Removing a message from a room (one that holds a secret), or saying plainly why not.

The bot may always remove its own messages; other people's only with the room's redaction
power level (50 by default), which a bot invited to someone's room does not have. The
homeserver decides; the room's power levels (as nio holds them) give the numbers a person
needs to fix it.
"""

from __future__ import annotations

import asyncio
import logging

from nio import AsyncClient, RoomRedactError

from ganglion.interfaces.matrix.session import http_status, retryable

log = logging.getLogger(__name__)

UNREACHABLE = "the homeserver could not be reached"


async def redact(client: AsyncClient | None, room_id: str, event_id: str, reason: str) -> str:
    """"" once the homeserver accepted; otherwise why not, in words for the person."""
    if client is None:
        return UNREACHABLE
    try:
        resp = await client.room_redact(room_id, event_id, reason=reason)
    except asyncio.CancelledError:
        raise
    except Exception as err:
        log.warning("[%s] could not redact %s: %s", room_id, event_id, err)
        return UNREACHABLE
    if not isinstance(resp, RoomRedactError):
        return ""
    log.warning("[%s] the homeserver refused to redact %s: %s", room_id, event_id, resp)
    if resp.status_code == "M_FORBIDDEN":
        return lacking_power(client, room_id)
    if retryable(http_status(resp)):
        return UNREACHABLE
    return f"the homeserver refused ({resp.status_code or resp.message})"


def lacking_power(client: AsyncClient, room_id: str) -> str:
    """The refusal for lack of power, with the levels when the room's state is known."""
    room = client.rooms.get(room_id)
    if room is None:
        return "I lack the power to remove other people's messages in this room"
    levels = room.power_levels
    return (f"I lack the power to remove other people's messages in this room (it takes "
            f"power level {levels.defaults.redact}; mine is "
            f"{levels.get_user_level(client.user_id)}). A room admin can raise mine in the "
            "room's settings (Element: Roles & Permissions)")
