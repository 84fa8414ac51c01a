"""A message's audio and files made into text before its turn: each voice message
transcribed (``turn/hearing.py``), each file saved into the workspace (``turn/inbox_files.py``);
the user's text the model reads, and that history keeps, says what they hold.

Place in the flow: the worker calls ``prepare`` before it stores the user message, so later
turns and compaction read the words of a voice message, not a file id. A re-run of the turn
(a crash before the answer) finds that text in history and does nothing again: no second
transcription, no second copy. Images are not touched: ``turn/vision.py`` shows them.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

from ganglion.config_stt import SttConfig
from ganglion.messages import Inbound
from ganglion.storage.history import StoredMessage
from ganglion.storage.media import MediaStore
from ganglion.tools.files import Workspace
from ganglion.turn.hearing import Hearing, HearingError
from ganglion.turn.inbox_files import InboxFiles

log = logging.getLogger(__name__)

HEARD = "🎤 “{}”"
"""The notice showing the sender what was heard: mistakes are visible."""
NOTHING_HEARD = "🎤 No words were heard in the voice message."


@dataclass(frozen=True, slots=True)
class Prepared:
    """What a message with audio or files becomes."""

    text: str
    """The user's text with a line per voice message and file: what the model reads."""
    notices: tuple[str, ...] = ()
    """For the sender, at once: the transcripts, or why there is none."""
    answer: bool = True
    """Something is left for the model to answer (not only a voice message unheard)."""


class Attachments:
    """Turns a message's audio and files into text for its turn."""

    def __init__(self, store: MediaStore, stt: SttConfig, workspace: Workspace) -> None:
        self.store = store
        self.hearing = Hearing(store, stt)
        self.files = InboxFiles(store, workspace)

    async def close(self) -> None:
        await self.hearing.close()

    async def prepare(self, msg: Inbound, history: Sequence[StoredMessage]) -> Prepared | None:
        """None when the message has no audio nor file, or an earlier run of its turn
        already stored its text (``history`` holds it)."""
        if not msg.attachments or any(m.role == "user" and m.inbox_id == msg.id
                                      for m in history):
            return None
        media = (await self.store.of_inboxes([msg.id])).get(msg.id, [])
        if not any(m.kind != "image" for m in media):
            return None
        lines: list[str] = []
        notices: list[str] = []
        failures: list[str] = []
        answer = bool(msg.text.strip()) or any(m.is_image for m in media)
        for m in media:
            if m.kind == "file":
                lines.append(await self.files.save(m))
                answer = True
            elif m.kind == "audio":
                try:
                    words = await self.hearing.transcribe(m)
                except HearingError as err:
                    log.warning("[%s] voice message %s not transcribed: %s", msg.thread_id,
                                m.id[:16], err)
                    lines.append("[voice message: not transcribed]")
                    failures.append(str(err) if not self.hearing.ready
                                    else f"I could not transcribe your voice message: {err}.")
                    continue
                lines.append(f"[voice message] {words}" if words
                             else "[voice message: no words heard]")
                notices.append(HEARD.format(words) if words else NOTHING_HEARD)
                answer = answer or bool(words)
        if failures:
            notices.append(" ".join([*dict.fromkeys(failures), (
                "The rest of your message was answered." if answer
                else "Nothing else came with it, so there is nothing to answer.")]))
        text = "\n".join(part for part in (msg.text, *lines) if part)
        return Prepared(text, tuple(notices), answer)
