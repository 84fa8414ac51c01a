"""The only types crossing the bus: ThreadId, Inbound (to the worker), Outbound (to the router)."""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, field
from enum import StrEnum
from typing import NewType

ThreadId = NewType("ThreadId", str)
"""One conversation: a Matrix room id (``!abc:server``), a Matrix ``m.thread`` in a room
(``!abc:server/$root``), or a browser tab (``web_<hex>``).

"Thread" here never means an OS thread: it is the unit of ordering (turns in one thread run
one after another) and of history. A Matrix ``m.thread`` is a conversation of its own, apart
from its room's main timeline.
"""

# \A...\Z, never ^...$: "$" also matches before a final newline, and an id that ends in
# one would pass the check and then name a different thread in every lookup.
WEB_THREAD_RE = re.compile(r"\Aweb_[0-9a-f]{16,64}\Z")
MATRIX_ROOM_RE = re.compile(r"\A![^\s:/]+(:[^\s/]+)?\Z")
"""``!opaque:server``; from room version 12 on, ``!opaque`` alone (no server part). Neither
part holds a ``/`` (a server name cannot; a v12 id is URL-safe base64)."""
MATRIX_THREAD_RE = re.compile(r"\A(![^\s:/]+(?::[^\s/]+)?)/(\$\S+)\Z")
"""A room id, ``/``, the thread root's event id (which may hold a ``/``: room version 3)."""


def web_thread_id(hex_part: str | None = None) -> ThreadId:
    """The thread id of a browser tab; a fresh one when no hex part is given."""
    tid = f"web_{hex_part if hex_part is not None else secrets.token_hex(16)}"
    if not WEB_THREAD_RE.match(tid):
        raise ValueError(f"not a web thread id: {tid!r}")
    return ThreadId(tid)


def matrix_thread_id(room_id: str, root: str | None = None) -> ThreadId:
    """The thread id of a Matrix room is the room id itself (what every room's history was
    stored under); an ``m.thread`` in it is ``<room id>/<root event id>``."""
    if not MATRIX_ROOM_RE.match(room_id):
        raise ValueError(f"not a Matrix room id: {room_id!r}")
    if root is None:
        return ThreadId(room_id)
    tid = f"{room_id}/{root}"
    if not MATRIX_THREAD_RE.match(tid):
        raise ValueError(f"not a Matrix thread root: {root!r}")
    return ThreadId(tid)


def matrix_room_of(thread_id: str) -> str:
    """The room a Matrix thread id belongs to (itself for a room's main timeline)."""
    found = MATRIX_THREAD_RE.match(thread_id)
    return found.group(1) if found else thread_id


def matrix_thread_root(thread_id: str) -> str | None:
    """The root event of an ``m.thread`` thread id; None for a room's main timeline."""
    found = MATRIX_THREAD_RE.match(thread_id)
    return found.group(2) if found else None


def is_web_thread(thread_id: str) -> bool:
    return bool(WEB_THREAD_RE.match(thread_id))


def is_matrix_thread(thread_id: str) -> bool:
    """A Matrix room or an ``m.thread`` in one."""
    return bool(MATRIX_ROOM_RE.match(thread_id) or MATRIX_THREAD_RE.match(thread_id))


class Source(StrEnum):
    """Who produced an inbound message."""

    WEB = "web"
    MATRIX = "matrix"
    REMINDER = "reminder"
    HEARTBEAT = "heartbeat"


@dataclass(frozen=True, slots=True)
class Inbound:
    """A unit of work for the worker, already stored durably by the bus.

    ``client_id`` deduplicates: a web client message id, a Matrix event id, a reminder
    firing id. The same (thread_id, client_id) is accepted once.
    """

    thread_id: ThreadId
    text: str
    sender: str
    source: Source
    client_id: str
    system: bool = False
    """An autonomous turn (system reminder, global heartbeat): nothing is delivered to chat."""
    id: int = 0
    """The inbox row id, assigned when the bus stores the message."""
    meta: dict[str, str] = field(default_factory=dict, hash=False, compare=False)
    attachments: tuple[str, ...] = ()
    """Media ids (``storage/media.py``) sent with the text, stored with the inbox row."""


class OutKind(StrEnum):
    """What an outbound event carries."""

    DELTA = "delta"  # a streamed piece of the answer in progress (ephemeral)
    RESET = "reset"  # the answer in progress was discarded (retry/failover): clear it
    MESSAGE = "message"  # a final message: durable, delivered exactly once per interface
    STATE = "state"  # ephemeral: idle / thinking / streaming / tool / error (a failed turn)
    TOOL = "tool"  # a tool call made during the turn (durable, shown collapsed)
    TITLE = "title"  # ephemeral: the web conversation's new short title (stored already)


class Role(StrEnum):
    """The role shown in the transcript (the web UI's data-role)."""

    USER = "user"
    ASSISTANT = "assistant"
    SYSTEM = "system"
    TOOL = "tool"


@dataclass(frozen=True, slots=True)
class Outbound:
    """Something for the interface(s) that own ``thread_id``."""

    thread_id: ThreadId
    kind: OutKind
    text: str = ""
    role: Role = Role.ASSISTANT
    message_id: int = 0
    """The durable message id (history row) for MESSAGE and TOOL; 0 for ephemeral events."""
    reply_to: int = 0
    """The inbox id this answers, when it answers one."""
