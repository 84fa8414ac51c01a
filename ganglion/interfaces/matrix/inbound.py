"""Matrix events in: which ones may reach the bus, and the Inbound each becomes.

Pure functions of an event and the config, so the edge's rules read in one place: the bot's
own events and senders outside ``matrix.allowed_users`` never become work (rooms outside
``matrix.allowed_rooms`` are skipped whole, before their events are read); an edit of an
earlier message is not a new question; the quote a reply carries is left out. The Matrix
event id is the message's ``client_id``, so the bus stores each event once.
"""

from __future__ import annotations

import re
from typing import Any

from nio import InviteMemberEvent, MegolmEvent, RoomMessageText

from ganglion.config import MatrixConfig
from ganglion.messages import Inbound, Source, matrix_thread_id

_REPLY_FALLBACK = re.compile(r"\A(?:>.*\n)+\n")


def refusal(config: MatrixConfig, event: Any) -> str | None:
    """Why this timeline event is not for the bot (a log line), or None when it is.

    Only text messages and encrypted events (decryptable or not) are considered at all;
    anything else is refused with an empty reason (nothing worth logging).
    """
    if not isinstance(event, RoomMessageText | MegolmEvent):
        return ""
    if event.sender == config.user_id:
        return ""
    if not config.allows(event.sender):
        return f"a message from {event.sender} (not in matrix.allowed_users)"
    return None


def to_inbound(room_id: str, event: RoomMessageText) -> Inbound | None:
    """The Inbound for an allowed text message; None for an edit of an earlier one."""
    relates = (event.source.get("content") or {}).get("m.relates_to")
    if not isinstance(relates, dict):  # any JSON a client sent; nio does not check it
        relates = {}
    if relates.get("rel_type") == "m.replace":
        return None
    text = event.body
    if "m.in_reply_to" in relates:
        text = _REPLY_FALLBACK.sub("", text, count=1)  # the quoted message it answers
    encrypted = "1" if getattr(event, "decrypted", False) else "0"
    return Inbound(thread_id=matrix_thread_id(room_id), text=text, sender=event.sender,
                   source=Source.MATRIX, client_id=event.event_id,
                   meta={"event_id": event.event_id, "encrypted": encrypted})


def inviter(invite_state: list[Any], own_id: str) -> str | None:
    """Who invited the bot, from a room's invite state."""
    return next((e.sender for e in invite_state if isinstance(e, InviteMemberEvent)
                 and e.state_key == own_id and e.membership == "invite"), None)


def invite_refusal(config: MatrixConfig, room_id: str, inviter_id: str) -> str | None:
    """Why the bot refuses this invite, or None when it joins."""
    if not config.allows(inviter_id):
        return f"{inviter_id} is not in matrix.allowed_users"
    if not config.allows_room(room_id):
        return "the room is not in matrix.allowed_rooms"
    return None
