"""Images for the model: a turn's attachments as OpenAI ``image_url`` parts, or a placeholder.

Place in the flow: the worker asks ``look`` what the context's images cost (the budget counts
them) and ``apply`` to put them into the prompt ``llm/prompt.py`` built. A model that sees
images gets those of the last ``history_images`` user messages, each downscaled to
``max_pixels`` and re-encoded (orientation applied, EXIF and other metadata dropped); any
other image becomes one line that never changes ("[image: 1200x800 PNG image, not shown]"),
so the prompt stays a stable prefix for the server's cache.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ganglion.storage.history import StoredMessage
from ganglion.storage.media import Media, MediaStore

log = logging.getLogger(__name__)

PIXELS_PER_TOKEN = 750
"""An image's cost: its pixels over 750 (Anthropic's published rule; OpenAI's tiles come out
lower, local vision models between): about 3,300 tokens at 1568x1568."""
JPEG_QUALITY = 85
CANNOT_SEE = ("The current model ({model}) cannot see images, so only your text was "
              "answered. Switch with /model <vision model>, or list the model in "
              "llm.vision_models if it can.")


def fit(width: int, height: int, max_pixels: int) -> tuple[int, int]:
    """The size an image is sent at: at most ``max_pixels``, its aspect kept."""
    if width * height <= max_pixels:
        return width, height
    scale = math.sqrt(max_pixels / (width * height))
    return max(1, math.floor(width * scale)), max(1, math.floor(height * scale))


def image_tokens(media: Media, max_pixels: int) -> int:
    """Our estimate of what one image costs the model, at the size it is sent."""
    width, height = fit(media.width or 1, media.height or 1, max_pixels)
    return math.ceil(width * height / PIXELS_PER_TOKEN)


def placeholder(media: Media) -> str:
    """What the model reads instead of an image it is not shown: the same every turn."""
    return f"[image: {media.describe()}, not shown]"


def downscale(path: Path, max_pixels: int) -> tuple[bytes, str]:
    """The image re-encoded at most ``max_pixels``: (bytes, type). JPEG, or PNG when it has
    transparency. Only pixels go out: no EXIF (location, camera), orientation applied."""
    # Imported at the first image: Pillow costs memory a daemon that never sees one keeps.
    from PIL import Image, ImageOps  # noqa: PLC0415

    with Image.open(path) as img:
        target = fit(*img.size, max_pixels)
        if img.format == "JPEG" and target != img.size:
            img.draft("RGB", target)  # decode at 1/2, 1/4 or 1/8 scale: a 12 MP photo fast
        frame = ImageOps.exif_transpose(img)  # GIF/WebP: the first frame
        target = fit(*frame.size, max_pixels)
        alpha = frame.mode in ("RGBA", "LA", "PA") or "transparency" in frame.info
        frame = frame.convert("RGBA" if alpha else "RGB")
        if frame.size != target:
            frame = frame.resize(target, Image.Resampling.LANCZOS, reducing_gap=3.0)
        out = io.BytesIO()
        if alpha:
            frame.save(out, "PNG", optimize=False)
            return out.getvalue(), "image/png"
        frame.save(out, "JPEG", quality=JPEG_QUALITY, optimize=True)
        return out.getvalue(), "image/jpeg"


@dataclass(frozen=True, slots=True)
class Looks:
    """The images of one turn's context: each user message's, those sent, their cost."""

    attached: dict[int, list[Media]] = field(default_factory=dict)
    shown: frozenset[int] = frozenset()
    """The inbox ids whose images are sent as images."""
    tokens: int = 0


class Vision:
    """Decides which images the model sees, and prepares them (a few kept ready: a photo is
    sent again with the next turns, and downscaled once)."""

    def __init__(self, store: MediaStore, sees: Callable[[str], bool], max_pixels: int,
                 history_images: int, cached: int = 8) -> None:
        self.store = store
        self.sees = sees
        self.max_pixels = max_pixels
        self.history_images = history_images
        self._ready: OrderedDict[str, str] = OrderedDict()
        """media id -> data URL, least recently used first."""
        self._cached = cached

    async def cannot_see(self, inbox_id: int, model: str) -> str | None:
        """The notice for a message with images to a model that cannot see them, or None."""
        if self.sees(model):
            return None
        media = (await self.store.of_inboxes([inbox_id])).get(inbox_id, [])
        return CANNOT_SEE.format(model=model) if any(m.is_image for m in media) else None

    async def look(self, context: Sequence[StoredMessage], model: str) -> Looks:
        if not await self.store.any_media():  # a daemon that never saw an image: no query
            return Looks()
        users = [m.inbox_id for m in context if m.role == "user" and m.inbox_id]
        # Audio and files reached the model as text (turn/attachments.py): images only here.
        attached = {i: images for i, media in
                    (await self.store.of_inboxes(users) if users else {}).items()
                    if (images := [m for m in media if m.is_image])}
        if not attached:
            return Looks()
        recent = users[-self.history_images:] if self.history_images else []
        shown = frozenset(i for i in recent if i in attached) if self.sees(model) else frozenset()
        tokens = sum(image_tokens(m, self.max_pixels) if i in shown and _sendable(m)
                     else len(placeholder(m)) // 4 + 1
                     for i, media in attached.items() for m in media)
        return Looks(attached, shown, tokens)

    async def apply(self, prompt: list[dict[str, Any]], context: Sequence[StoredMessage],
                    looks: Looks) -> list[dict[str, Any]]:
        """``prompt`` (built from ``context``) with each user message's images in it."""
        if not looks.attached:
            return prompt
        # history_messages() turns each user row into one user message, in order.
        rows = iter([m for m in context if m.role == "user"])
        out: list[dict[str, Any]] = []
        for message in prompt:
            row = next(rows) if message["role"] == "user" else None
            media = looks.attached.get(row.inbox_id or 0, []) if row is not None else []
            if row is None or not media:
                out.append(message)
                continue
            content = await self._content(message["content"], media,
                                          row.inbox_id in looks.shown)
            out.append({**message, "content": content})
        return out

    async def _content(self, text: str, media: list[Media], shown: bool) -> Any:
        urls = {m.id: await self._data_url(m) for m in media if shown and _sendable(m)}
        lines = [placeholder(m) for m in media if urls.get(m.id) is None]
        text = "\n".join([text, *lines]) if lines else text
        if not any(urls.values()):
            return text
        return [{"type": "text", "text": text},
                *({"type": "image_url", "image_url": {"url": url}} for url in urls.values()
                  if url is not None)]

    async def _data_url(self, media: Media) -> str | None:
        """None when the file cannot be read (retention removed it meanwhile)."""
        url = self._ready.get(media.id)
        if url is None:
            try:
                data, kind = await asyncio.to_thread(downscale, self.store.path(media.id),
                                                     self.max_pixels)
            except OSError as err:
                log.warning("image %s cannot be read: %s", media.id[:16], err)
                return None
            url = f"data:{kind};base64,{base64.b64encode(data).decode('ascii')}"
            self._ready[media.id] = url
            while len(self._ready) > self._cached:
                self._ready.popitem(last=False)
        self._ready.move_to_end(media.id)
        return url


def _sendable(media: Media) -> bool:
    return media.is_image and not media.removed
