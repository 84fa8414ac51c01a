"""A ``send`` frame from a tab, checked before anything is stored: its id, its text, its size."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

CLIENT_ID_RE = re.compile(r"\A[\x21-\x7e]{1,64}\Z")
"""The id the page gives a message (it makes a resend recognisable)."""


@dataclass(frozen=True, slots=True)
class Refused:
    """Why a frame is refused: ``bad_frame`` (malformed) or ``too_large``, for the tab."""

    code: str
    message: str
    cid: str | None = None


def malformed(kind: object, err: ValidationError) -> str:
    """What a tab is told of a frame its schema refused: the frame, the field, the why."""
    first = err.errors()[0]
    where = ".".join(str(p) for p in first["loc"][1:]) or "frame"
    return f"{kind}: {where}: {first['msg']}; nothing was changed"


def checked_send(frame: dict[str, Any], limit: int) -> tuple[str, str] | Refused:
    """The frame's (client id, text), or why it is refused."""
    cid, text = frame.get("id"), frame.get("text")
    if not isinstance(cid, str) or not CLIENT_ID_RE.match(cid):
        return Refused("bad_frame", 'send needs "id": 1 to 64 visible ASCII characters')
    if text is None and frame.get("attachments"):  # a voice message or a file alone
        text = ""
    if not isinstance(text, str) or not (text.strip() or frame.get("attachments")):
        return Refused("bad_frame", 'send needs "text": a non-empty string (or '
                       '"attachments")', cid)
    try:
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        return Refused("bad_frame", '"text" is not valid Unicode (lone surrogate)', cid)
    if size > limit:
        return Refused("too_large", f"Message is {size:,} bytes; the limit is {limit:,}"
                                    " (web.max_message_bytes).", cid)
    return cid, text
