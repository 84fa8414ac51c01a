"""The ``stt`` section of the config: where voice messages are turned into text.

Place in the flow: ``ganglion.config`` includes it; ``app.py`` hands it to the worker's
hearing step (``turn/hearing.py``), which posts each audio attachment to an OpenAI-compatible
``/v1/audio/transcriptions`` (whisper.cpp's server, faster-whisper servers, OpenAI).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ganglion.config_base import Section


class SttConfig(Section):
    """Speech to text. See README, "Images, voice and files"."""

    base_url: Annotated[str, Field(pattern=r"^https?://\S+$")] | None = None
    """The server's OpenAI-compatible base URL (…/v1); null: voice messages are not
    transcribed, and the sender is told so."""
    model: Annotated[str, Field(min_length=1)] = "whisper-1"
    api_key: str = "none"
    language: Annotated[str, Field(pattern=r"^[a-z]{2,3}$")] | None = None
    """The spoken language (ISO 639-1, "en"), when known: faster and surer than detection."""
    timeout_seconds: Annotated[float, Field(gt=0, le=3600)] = 120.0
    """How long one transcription may take (a long voice note on a CPU is slow)."""
    convert: bool = False
    """Convert audio that is not WAV to 16 kHz mono WAV with ffmpeg (on PATH) before sending
    it: for a server that reads only WAV (whisper.cpp's server started without
    --convert)."""
