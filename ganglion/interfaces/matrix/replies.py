"""The message a reply answers (or a thread began with), read back for the model's context.

``with_context`` adds it to the Inbound, after the text, fenced as quoted untrusted text
(``inbound.with_quote``): the first message of a thread gets the message the thread began
with, a reply the message it answers; a command gets nothing. The message is asked of the
homeserver (``room_get_event``) and decrypted with the keys this device holds;
a message it cannot read, or that is gone, is simply not quoted. Short: the model needs to
know what is meant, not the whole of it.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from dataclasses import replace

from nio import AsyncClient, MegolmEvent, RoomGetEventError, RoomMessageNotice, RoomMessageText

from ganglion.interfaces.matrix import inbound
from ganglion.messages import Inbound
from ganglion.storage.inbox import Inbox

log = logging.getLogger(__name__)

QUOTE_CHARS = 600


async def with_context(client: AsyncClient, inbox: Inbox, room_id: str, event: RoomMessageText,
                       msg: Inbound) -> Inbound:
    """``msg`` with the message its event replies to, or (the first message of a thread) the
    one the thread began with, quoted after its text."""
    if not inbound.quotable(msg.text):
        return msg
    target = inbound.reply_target(event)
    thread_start = False
    if target is None and (root := inbound.thread_root(event)) is not None:
        try:
            thread_start = not await inbox.has_thread(msg.thread_id)
        except sqlite3.Error:  # only context; storing the message itself will say more
            thread_start = False
        target = root if thread_start else None
    if target is None:
        return msg
    found = await quoted(client, room_id, target)
    if found is None:
        return msg
    return replace(msg, text=inbound.with_quote(msg.text, *found, thread_start))


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
    text = inbound.strip_reply_fallback(event.body)
    if len(text) > QUOTE_CHARS:
        text = text[:QUOTE_CHARS - 1] + "…"
    return event.sender, text
