"""The page's settings view over its WebSocket: the memory files, reminders, tools, models and
token use, read and changed through the parts' own verbs.

Place in the flow: a tab's frame -> ``web.py`` -> ``SettingsFrames.handle`` (validated whole,
pydantic, before anything changes) -> the ``Settings`` the composition root hands in (it
calls the memory tools' writes, the reminder trigger's cancel, ``/model``'s verb: this edge
imports none of them) -> the answer to that tab. Nothing secret is in any answer: endpoint
URLs come without credentials and no key, token or MCP environment value is read here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Annotated, Any, Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, TypeAdapter, ValidationError

from ganglion.interfaces.web_send import malformed
from ganglion.messages import ThreadId

log = logging.getLogger(__name__)

# The files the page may edit: the two lists and the skills (scripts stay the tools' own).
# pydantic checks patterns with Rust's regex: "\z" is its end of text.
FileName = Annotated[str, StringConstraints(
    pattern=r"\A(MEMORIES\.txt|HEARTBEATS\.txt|skills/[A-Za-z0-9][A-Za-z0-9_.-]{0,80}\.md)\z")]
Version = Annotated[str, StringConstraints(pattern=r"\A[0-9a-f]{32}\z")]
"""A hash of the text an edit started from (``tools.memory.version_of``)."""


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ViewFrame(_Frame):
    type: Literal["settings"]


class SaveFrame(_Frame):
    type: Literal["settings_save"]
    name: FileName
    text: str
    version: Version


class DeleteFileFrame(_Frame):
    type: Literal["settings_delete"]
    name: FileName
    version: Version


class CancelReminderFrame(_Frame):
    type: Literal["settings_cancel_reminder"]
    id: Annotated[int, Field(ge=1)]


class ModelFrame(_Frame):
    type: Literal["settings_model"]
    model: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1,
                                            max_length=300)]


AnyFrame = Annotated[
    ViewFrame | SaveFrame | DeleteFileFrame | CancelReminderFrame | ModelFrame,
    Field(discriminator="type"),
]
FRAMES: TypeAdapter[AnyFrame] = TypeAdapter(AnyFrame)
SETTINGS_KINDS = frozenset({"settings", "settings_save", "settings_delete",
                            "settings_cancel_reminder", "settings_model"})

Frame = dict[str, Any]
Put = Callable[[Frame], object]
"""Queue a frame for the asking tab."""


class Settings(Protocol):
    """What the view reads and changes; each answer is the frame the asking tab gets."""

    async def view(self, thread_id: ThreadId) -> Frame:
        """``settings``: every section, the model picker's for this conversation."""

    async def save(self, name: str, text: str, version: str) -> Frame:
        """``settings_saved``, or ``settings_conflict`` with the file's new text, or
        ``settings_refused`` saying why (too large)."""

    async def delete(self, name: str, version: str) -> Frame:
        """``settings_deleted`` (a skill), ``settings_conflict`` or ``settings_refused``."""

    async def cancel_reminder(self, reminder_id: int) -> Frame:
        """``settings_reminder_cancelled``, or ``settings_refused`` (no such reminder)."""

    async def set_model(self, thread_id: ThreadId, model: str) -> Frame:
        """``settings_model`` (the conversation's model now), or ``settings_refused``."""


class SettingsFrames:
    """Answers the settings view's frames of one tab, with the tab's conversation."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    async def handle(self, put: Put, thread_id: ThreadId, raw: dict[str, Any]) -> None:
        try:
            frame = FRAMES.validate_python(raw)
        except ValidationError as err:
            put({"type": "error", "code": "bad_frame", "message": malformed(raw.get("type"), err)})
            return
        if isinstance(frame, ViewFrame):
            answer = await self.settings.view(thread_id)
        elif isinstance(frame, SaveFrame):
            answer = await self.settings.save(frame.name, frame.text, frame.version)
        elif isinstance(frame, DeleteFileFrame):
            answer = await self.settings.delete(frame.name, frame.version)
        elif isinstance(frame, CancelReminderFrame):
            answer = await self.settings.cancel_reminder(frame.id)
        else:
            answer = await self.settings.set_model(thread_id, frame.model)
        put(answer)
