"""The ``media`` section of the config: files that come with messages (images first).

Place in the flow: ``ganglion.config`` includes it; ``app.py`` hands its values to the media
store (``storage/media.py``), the upload route and the worker's vision step.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from ganglion.config_base import Section


class MediaConfig(Section):
    """Uploads and what the model is shown of them. See README, "Images, voice and files"."""

    max_bytes: Annotated[int, Field(ge=1024, le=1 << 31)] = 20 * 1024 * 1024
    """The largest file accepted; a larger upload is refused (413) as it streams in."""
    keep_days: Annotated[int, Field(ge=1, le=36_500)] | None = 30
    """Files unused this long are removed from data/media/ (at start, then daily), never
    one an unanswered message attaches; null keeps them."""
    max_image_pixels: Annotated[int, Field(ge=64 * 64, le=50_000_000)] = 1568 * 1568
    """An image is downscaled (aspect kept) to at most this many pixels before a model sees
    it."""
    history_images: Annotated[int, Field(ge=0, le=100)] = 2
    """Images of the last this many user messages are sent again with each turn; older
    ones become a one-line placeholder (each image costs ~1,000-3,000 tokens)."""
