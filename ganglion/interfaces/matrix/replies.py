"""The message a reply answers (or a thread began with), read back for the model's context.

Asked of the homeserver (``room_get_event``) and decrypted with the keys this device holds;
a message it cannot read, or that is gone, is simply not quoted. Short: the model needs to
know what is meant, not the whole of it.
"""

from __future__ import annotations

import asyncio
import logging

from nio import AsyncClient, MegolmEvent, RoomGetEventError, RoomMessageNotice, RoomMessageText

from ganglion.interfaces.matrix.inbound import strip_reply_fallback

log = logging.getLogger(__name__)

QUOTE_CHARS = 600


async def quoted(client: AsyncClient, room_id: str, event_id: str) -> tuple[str, str] | None:
    """(sender, text) of a message of the room; None when it cannot be read."""
    try:
        resp = await client.room_get_event(room_id, event_id)
    except asyncio.CancelledError:
        raise
    except Exception as err:  # only context: the message is answered without it
        log.info("[%s] could not fetch the message %s replies point to: %s", room_id,
                 event_id, err)
        return None
    if isinstance(resp, RoomGetEventError):
        log.info("[%s] the message %s is not readable: %s", room_id, event_id, resp)
        return None
    event = resp.event
    if isinstance(event, MegolmEvent):
        try:
            event = client.decrypt_event(event)
        except Exception as err:  # no key for it: not quoted
            log.info("[%s] cannot decrypt the replied-to message %s: %s", room_id, event_id,
                     err)
            return None
    if not isinstance(event, RoomMessageText | RoomMessageNotice):
        return None
    text = strip_reply_fallback(event.body)
    if len(text) > QUOTE_CHARS:
        text = text[:QUOTE_CHARS - 1] + "…"
    return event.sender, text
