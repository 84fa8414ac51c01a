"""Matrix events in: which ones may reach the bus, and the Inbound each becomes.

Pure functions of an event and the config, so the edge's rules read in one place: the bot's
own events and senders outside ``matrix.allowed_users`` never become work (rooms outside
``matrix.allowed_rooms`` are skipped whole, before their events are read); an edit of an
earlier message is not a new question; the quote a reply carries is left out (the message
it replies to is given whole, fenced: ``with_quote``); a message in an ``m.thread`` is that
thread's; a media message's text is its caption (its file comes through ``intake``). The
Matrix event id is the message's ``client_id``, so the bus stores each event once.
"""

from __future__ import annotations

import re
from typing import Any

from nio import InviteMemberEvent, MegolmEvent, RoomMessageText

from ganglion.config_matrix import MatrixConfig
from ganglion.interfaces.matrix.attachments import caption_of, is_media
from ganglion.messages import Inbound, Source, ThreadId, matrix_thread_id
from ganglion.untrusted import as_data

_REPLY_FALLBACK = re.compile(r"\A(?:>.*\n)+\n")


def refusal(config: MatrixConfig, event: Any) -> str | None:
    """Why this timeline event is not for the bot (a log line), or None when it is.

    Only text and media messages and encrypted events (decryptable or not) are considered
    at all; anything else is refused with an empty reason (nothing worth logging).
    """
    if not isinstance(event, RoomMessageText | MegolmEvent) and not is_media(event):
        return ""
    if event.sender == config.user_id:
        return ""
    if not config.allows(event.sender):
        return f"a message from {event.sender} (not in matrix.allowed_users)"
    return None


def to_inbound(room_id: str, event: Any, attachments: tuple[str, ...] = ()) -> Inbound | None:
    """The Inbound for an allowed text or media message (with the ids of its stored
    files); None for an edit of an earlier one.

    A message in an ``m.thread`` belongs to that thread's conversation, not the room's. A
    media message's text is its caption, if it has one.
    """
    relates = _relates(event)
    if relates.get("rel_type") == "m.replace":
        return None
    text = caption_of(event) if is_media(event) else event.body
    if "m.in_reply_to" in relates:
        text = strip_reply_fallback(text)
    encrypted = "1" if getattr(event, "decrypted", False) else "0"
    return Inbound(thread_id=thread_of(room_id, event), text=text,
                   sender=event.sender, source=Source.MATRIX, client_id=event.event_id,
                   meta={"event_id": event.event_id, "encrypted": encrypted},
                   attachments=attachments)


def strip_reply_fallback(text: str) -> str:
    """A reply's body without the quote of the message it answers (``> ...`` lines)."""
    return _REPLY_FALLBACK.sub("", text, count=1)


def thread_root(event: Any) -> str | None:
    """The root event of the ``m.thread`` this message is in, if any."""
    relates = _relates(event)
    root = relates.get("event_id")
    return root if relates.get("rel_type") == "m.thread" and isinstance(root, str) else None


def reply_target(event: Any) -> str | None:
    """The event this message replies to; None for none, or for the fallback reply a
    message in a thread carries for clients without threads (``is_falling_back``)."""
    relates = _relates(event)
    if relates.get("rel_type") == "m.thread" and relates.get("is_falling_back") is not False:
        return None
    reply = relates.get("m.in_reply_to")
    target = reply.get("event_id") if isinstance(reply, dict) else None
    return target if isinstance(target, str) else None


def quotable(text: str) -> bool:
    """Whether a message may carry a quote: not a command (its arguments are its own)."""
    return not text.lstrip().startswith(("/", "!"))


def with_quote(text: str, sender: str, quoted: str, thread_start: bool) -> str:
    """``text`` followed by the message it replies to (or its thread's first message), fenced
    as untrusted quoted text: context for the model, never instructions."""
    what = (f"the message of {sender} that began this thread" if thread_start
            else f"the message of {sender} this replies to")
    return f"{text}\n\n{as_data(what, quoted)}"


def _relates(event: Any) -> dict[str, Any]:
    relates = (event.source.get("content") or {}).get("m.relates_to")
    # Any JSON a client sent; nio does not check it.
    return relates if isinstance(relates, dict) else {}


def thread_of(room_id: str, event: Any) -> ThreadId:
    """The conversation a message of the room belongs to: its ``m.thread``, or the room."""
    try:
        return matrix_thread_id(room_id, thread_root(event))
    except ValueError:  # not an event id: the room's main timeline
        return matrix_thread_id(room_id)


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
