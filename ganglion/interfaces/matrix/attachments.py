"""Matrix media events in: what an image, file or voice message holds, fetched into the store.

Place in the flow: ``intake`` asks ``Fetcher.fetch`` for the stored file of a media event
(``m.image``, ``m.file``, ``m.audio``, a voice message: ``m.audio`` marked
``org.matrix.msc3245.voice``), plain or encrypted. The size the event states is checked
before anything is downloaded, the size of what comes while it streams (the event may
lie); an encrypted file is decrypted with nio's attachment helper, which checks the
ciphertext against the event's sha256 first (a mismatch: nothing is stored). Every refusal
is a ``Refused`` whose text is what the person is told.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from nio import AsyncClient, EncryptionError, RoomEncryptedMedia, RoomMessageMedia
from nio.crypto import decrypt_attachment

from ganglion.interfaces.matrix.download import DownloadFailed, open_media
from ganglion.storage.media import Media, MediaRefused, MediaStore, MediaTooLarge

log = logging.getLogger(__name__)

VOICE = "org.matrix.msc3245.voice"
NAME_CHARS = 120


class Refused(Exception):
    """A media event whose file is not stored; the text says why, for the person."""


@dataclass(frozen=True, slots=True)
class Attachment:
    """What a media event says of its file (nothing of it checked yet)."""

    msgtype: str
    url: str
    filename: str | None
    """The file's name (``filename``, else ``body``: MSC2530), as the sender's client gave
    it; the media store cleans and keeps it."""
    name: str
    """The same on one line, for what the person is told ("the file" without one)."""
    caption: str
    """The message's text: ``body`` when a ``filename`` differs from it (MSC2530), else ""."""
    size: int | None = None
    """``info.size``, when the event states it."""
    voice: bool = False
    key: str | None = None
    """Encrypted files only: the AES key (``file.key.k``), IV and sha256 of the ciphertext."""
    iv: str = ""
    sha256: str = ""


def is_media(event: Any) -> bool:
    """An image, file, audio or video message, plain or with an encrypted file."""
    return isinstance(event, RoomMessageMedia | RoomEncryptedMedia)


def caption_of(event: Any) -> str:
    """A media event's text (MSC2530): its ``body`` when a ``filename`` differs from it."""
    content = event.source.get("content") or {}
    body, filename = content.get("body"), content.get("filename")
    if isinstance(body, str) and isinstance(filename, str) and filename and body != filename:
        return body
    return ""


def attachment_of(event: Any) -> Attachment | str:
    """What a media event carries; a str (what to tell the person) when it is unusable."""
    content = event.source.get("content") or {}
    msgtype = content.get("msgtype", "")
    info = content.get("info")
    info = info if isinstance(info, dict) else {}
    body, filename = content.get("body"), content.get("filename")
    given = filename if isinstance(filename, str) and filename else body
    given = given if isinstance(given, str) and given else None
    name = " ".join((given or "").split())[:NAME_CHARS] or "the file"
    if msgtype == "m.video":
        return (f"I cannot take videos ({name}): send an image, a voice message or a file "
                "(PDF, text, CSV).")
    size = info.get("size")
    common: dict[str, Any] = {
        "msgtype": msgtype, "filename": given, "name": name, "caption": caption_of(event),
        "size": size if isinstance(size, int) and not isinstance(size, bool) else None,
        "voice": VOICE in content}
    file = content.get("file")
    if isinstance(file, dict):  # encrypted: nio's schema checked url, key.k, iv, hashes
        sha256 = (file.get("hashes") or {}).get("sha256")
        if not isinstance(sha256, str):
            return f"I cannot take {name}: its message gives no sha256 hash of the file."
        return Attachment(url=str(file["url"]), key=str(file["key"]["k"]), iv=str(file["iv"]),
                          sha256=sha256, **common)
    return Attachment(url=str(content.get("url", "")), **common)


def size_text(size: int) -> str:
    """A size for people: "12.3 MB", "800 kB", "512 bytes"."""
    if size >= 1_000_000:
        return f"{size / 1_000_000:.1f} MB"
    return f"{size // 1000} kB" if size >= 1000 else f"{size} bytes"


class Fetcher:
    """Downloads a media event's file (a few tries with back-off) into the media store."""

    def __init__(self, store: MediaStore) -> None:
        self.store = store
        self.attempts = 3
        self.backoff = 1.0
        """Seconds before the second try, doubling after."""

    async def fetch(self, client: AsyncClient, att: Attachment, owner: str) -> Media:
        """The stored file of ``att``, owned by ``owner``; Refused with what to tell."""
        limit = self.store.max_bytes
        if att.size is not None and att.size > limit:  # nothing downloaded
            raise Refused(f"{att.name} is too large ({size_text(att.size)}; the limit is "
                          f"{size_text(limit)}, media.max_bytes), so I did not download it.")
        delay = self.backoff
        for attempt in range(1, self.attempts + 1):
            try:
                return await self._once(client, att, owner)
            except DownloadFailed as err:
                if not err.transient or attempt == self.attempts:
                    tries = f" after {attempt} tries" if attempt > 1 else ""
                    raise Refused(f"I could not download {att.name}{tries}: {err}. Please "
                                  "send it again.") from err
                log.info("matrix: download of %s failed (%s); try %d of %d in %.1f s",
                         att.url, err, attempt + 1, self.attempts, delay)
                await asyncio.sleep(delay)
                delay *= 2
            except MediaTooLarge:
                raise Refused(f"{att.name} is too large (more than {size_text(limit)}, the "
                              "limit: media.max_bytes), so I did not keep it.") from None
            except MediaRefused as err:
                raise Refused(f"I cannot take {att.name}: {err}") from None
        raise AssertionError("unreachable")  # the last try returns or raises

    async def _once(self, client: AsyncClient, att: Attachment, owner: str) -> Media:
        async with open_media(client, att.url) as body:
            if body.length is not None and body.length > self.store.max_bytes:
                raise MediaTooLarge(self.store.too_large(body.length))
            if att.key is None:
                return await self.store.receive(body.chunks, owner, att.filename)
            ciphertext = await _read_all(body.chunks, self.store.max_bytes)
        try:
            # nio's helper takes the whole ciphertext; it is bounded by media.max_bytes (AES
            # in CTR mode: the plaintext is as long), and decrypted off the event loop.
            plain = await asyncio.to_thread(decrypt_attachment, ciphertext, att.key,
                                            att.sha256, att.iv)
        except EncryptionError as err:
            log.warning("matrix: refused %s: %s", att.url, err)
            raise Refused(f"I did not keep {att.name}: its content does not match the hash "
                          "its message gives (damaged, or changed on the way), or it cannot "
                          "be decrypted with the key it came with.") from None
        return await self.store.receive(_one(plain), owner, att.filename)


async def _read_all(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    data = bytearray()
    async for chunk in chunks:
        data += chunk
        if len(data) > limit:
            raise MediaTooLarge(f"more than {limit} bytes")
    return bytes(data)


async def _one(data: bytes) -> AsyncIterator[bytes]:
    yield data
