"""The page's ``regenerate`` and ``edit`` frames: the last exchange replaced and answered again,
through the durable inbox and the bus like any message (``storage/redo.py``).

Each frame is validated whole before anything changes. The tab gets an ``ack`` (or an error
saying what to do); every tab of the conversation gets ``replaced`` (the rows to collapse)
and, for an edit, the new question as ``pending``; the answer comes as any answer does.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from ganglion.bus import Bus
from ganglion.interfaces.web_send import CLIENT_ID_RE, Refused, checked_send, malformed
from ganglion.messages import Inbound, Source, ThreadId
from ganglion.storage.redo import EDIT, HOW, REDO, REGENERATE, Redo, RedoRefused

log = logging.getLogger(__name__)

KINDS = frozenset({REGENERATE, EDIT})
ClientId = Annotated[str, StringConstraints(pattern=r"\A[\x21-\x7e]{1,64}\z")]


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    id: ClientId
    after: Annotated[int, Field(ge=1)]
    """The last message the page shows (its history id): the exchange the person sees."""


class RegenerateFrame(_Frame):
    type: Literal["regenerate"]


class EditFrame(_Frame):
    type: Literal["edit"]
    text: str


FRAMES: TypeAdapter[RegenerateFrame | EditFrame] = TypeAdapter(
    Annotated[RegenerateFrame | EditFrame, Field(discriminator="type")])

Put = Callable[[dict[str, Any]], object]
ToThread = Callable[[ThreadId, dict[str, Any]], None]
"""Queue a frame for every tab of a conversation."""


class RedoFrames:
    """Answers one tab's regenerate and edit frames."""

    def __init__(self, redo: Redo, bus: Bus, limit: int, to_thread: ToThread,
                 retitled: Callable[[ThreadId], Awaitable[None]]) -> None:
        self._redo = redo
        self._bus = bus
        self._limit = limit
        self._to_thread = to_thread
        self._retitled = retitled

    async def handle(self, tid: ThreadId, put: Put, raw: dict[str, Any]) -> None:
        kind = raw.get("type")
        given = raw.get("id")
        cid = given if isinstance(given, str) and CLIENT_ID_RE.match(given) else None
        try:
            frame = FRAMES.validate_python(raw)
        except ValidationError as err:
            self._refuse(put, "bad_frame", malformed(kind, err), cid)
            return
        text = ""
        if isinstance(frame, EditFrame):  # the same checks as a message sent anew
            checked = checked_send(raw, self._limit)
            if isinstance(checked, Refused):
                self._refuse(put, checked.code, f"edit: {checked.message.removeprefix('send ')}"
                                                "; nothing was changed", frame.id)
                return
            text = checked[1]
        msg = Inbound(tid, text, sender="web", source=Source.WEB, client_id=frame.id,
                      meta={REDO: frame.type})
        try:
            done = await self._redo.submit(msg, frame.after)
        except RedoRefused as err:
            self._refuse(put, err.code, str(err), frame.id)
            return
        except sqlite3.Error as err:  # the disk refused: nothing changed, it may be tried again
            log.error("[%s] web: could not store a %s: %s", tid, frame.type, err)
            self._refuse(put, "not_stored", f"{frame.type}: the database refused it ({err}); "
                                            "try again", frame.id)
            return
        if done.is_new:
            self._bus.accepted(done.msg)  # stored durably: now it may be acked
        put({"type": "ack", "id": frame.id, "duplicate": not done.is_new})
        if not done.is_new:
            return
        log.info("[%s] web: %s, %d message(s) replaced", tid, frame.type, len(done.replaced))
        self._to_thread(tid, {"type": "replaced", "how": HOW[frame.type], "ids": done.replaced,
                              "client_ids": done.client_ids})
        if isinstance(frame, EditFrame):
            self._to_thread(tid, {"type": "pending", "id": frame.id, "text": done.msg.text})
        if done.retitled:
            await self._retitled(tid)

    @staticmethod
    def _refuse(put: Put, code: str, message: str, cid: str | None) -> None:
        frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if cid is not None:
            frame["id"] = cid
        put(frame)
