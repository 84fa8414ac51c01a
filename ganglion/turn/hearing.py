"""Voice -> text: an audio attachment posted to an OpenAI-compatible
``/v1/audio/transcriptions`` (``stt`` in the config), its transcript returned.

Place in the flow: ``turn/attachments.py`` asks ``transcribe`` for each audio file of a
message before the turn; the words become the user's text the model reads. Audio goes as it
came (every server named in the README reads Ogg, WebM, MP3, WAV, M4A and FLAC), or, with
``stt.convert``, as 16 kHz mono WAV made by ffmpeg for a server that reads only WAV.
"""

from __future__ import annotations

import asyncio
import logging
import shutil
from typing import TYPE_CHECKING

from ganglion.config_stt import SttConfig
from ganglion.storage.media import Media, MediaStore

if TYPE_CHECKING:
    from openai import AsyncOpenAI

log = logging.getLogger(__name__)

NOT_SET_UP = ("Voice messages need stt.base_url: set it in the config to a speech-to-text "
              "server (whisper.cpp's server, faster-whisper or OpenAI; see README, \"Images, "
              "voice and files\").")
EXTENSIONS = {"audio/ogg": "ogg", "audio/webm": "webm", "audio/mpeg": "mp3",
              "audio/wav": "wav", "audio/mp4": "m4a", "audio/flac": "flac"}
"""The file name the server is given: servers pick the decoder by its extension, so it
comes from the content's type, never from the name the sender gave."""
CONVERT_SECONDS = 120.0


class HearingError(Exception):
    """A transcription that did not happen; the text is for the sender (no URL, no key)."""


class Hearing:
    """Transcribes audio files of the media store through ``stt``."""

    def __init__(self, store: MediaStore, config: SttConfig) -> None:
        self.store = store
        self.config = config
        self._client: AsyncOpenAI | None = None

    @property
    def ready(self) -> bool:
        return self.config.base_url is not None

    def _openai(self) -> AsyncOpenAI:
        if self._client is None:
            import openai  # noqa: PLC0415  (off the start-up path, as the LLM client's)

            assert self.config.base_url is not None
            self._client = openai.AsyncOpenAI(
                base_url=self.config.base_url, api_key=self.config.api_key or "none",
                timeout=self.config.timeout_seconds, max_retries=1)
        return self._client

    async def transcribe(self, media: Media) -> str:
        """The words of ``media`` ("" when none were heard); HearingError saying why not."""
        if not self.ready:
            raise HearingError(NOT_SET_UP)
        import openai  # noqa: PLC0415

        data, kind = await self._audio(media)
        try:
            result = await self._openai().audio.transcriptions.create(
                model=self.config.model, file=(f"voice.{EXTENSIONS[kind]}", data, kind),
                language=self.config.language or openai.omit)
        except openai.APITimeoutError:
            raise HearingError(f"the speech-to-text server did not answer within "
                               f"{self.config.timeout_seconds:g} s (stt.timeout_seconds)") from None
        except openai.APIConnectionError:
            raise HearingError("the speech-to-text server (stt.base_url) cannot be "
                               "reached") from None
        except openai.APIStatusError as err:
            log.warning("stt: %s answered %d: %s", self.config.model, err.status_code,
                        err.message)
            raise HearingError(f"the speech-to-text server refused it ({err.status_code}: "
                               f"{err.message[:200]})") from None
        except openai.APIError as err:  # an answer that is not a transcription
            raise HearingError(f"the speech-to-text server's answer could not be read "
                               f"({type(err).__name__})") from None
        text = result.text if isinstance(result.text, str) else ""
        return " ".join(text.split())

    async def _audio(self, media: Media) -> tuple[bytes, str]:
        """The bytes to send and their type: as stored, or converted to WAV."""
        path = self.store.path(media.id)
        try:
            data = await asyncio.to_thread(path.read_bytes)
        except OSError:
            raise HearingError("the voice message's file is no longer stored") from None
        if not self.config.convert or media.type == "audio/wav":
            return data, media.type
        ffmpeg = shutil.which("ffmpeg")
        if ffmpeg is None:
            raise HearingError(f"stt.convert is on but ffmpeg is not on PATH: install it, or "
                               f"set stt.convert: false if the server reads {media.describe()}")
        proc = await asyncio.create_subprocess_exec(
            ffmpeg, "-nostdin", "-hide_banner", "-loglevel", "error", "-i", "pipe:0",
            "-ar", "16000", "-ac", "1", "-f", "wav", "pipe:1",
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE)
        try:
            out, err = await asyncio.wait_for(proc.communicate(data), CONVERT_SECONDS)
        except TimeoutError:
            raise HearingError("converting the voice message took too long") from None
        finally:
            if proc.returncode is None:  # timed out, or the turn was stopped
                proc.kill()
                await proc.wait()
        if proc.returncode != 0 or not out:
            why = err.decode("utf-8", "replace").strip().splitlines()[-1:] or ["no output"]
            raise HearingError(f"this audio cannot be read ({media.describe()}): {why[0]}")
        return out, "audio/wav"

    async def close(self) -> None:
        if self._client is not None:
            await self._client.close()
