"""The web edge's uploads: POST /upload streams a file into the media store, over HTTP with
the token, and answers its id; a ``send`` frame then names the ids it attaches.

Why over HTTP and not in the WebSocket: a photo is megabytes, the WebSocket frame limit is
``web.max_message_bytes``; and a body streamed to disk is never held in memory, so
``media.max_bytes`` is checked as it comes. The token travels in ``Authorization: Bearer``
(never in the URL), the ``Origin`` is checked like the WebSocket's, wrong tokens are
throttled like the login's.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import BodyPartReader, web

from ganglion.interfaces.web_guard import BearerCheck
from ganglion.interfaces.web_media import MediaFiles
from ganglion.storage.media import MEDIA_ID_LEN, Media, MediaRefused, MediaStore, MediaTooLarge

log = logging.getLogger(__name__)

OWNER = "web"
"""Whose uploads these are: a web message may attach only these."""
CHUNK = 64 * 1024
MAX_ATTACHMENTS = 10


def media_json(media: Media) -> dict[str, Any]:
    return {"id": media.id, "type": media.type, "bytes": media.bytes,
            "width": media.width, "height": media.height, "name": media.name}


class Uploads:
    """The upload route of one web server, and the check of a frame's attachments."""

    def __init__(self, store: MediaStore, check: BearerCheck) -> None:
        self.store = store
        self._check = check
        self.files = MediaFiles(store, check)
        """GET /media/<id>, and the attachments the page's frames carry."""

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/upload", self.handle)
        app.router.add_get("/media/{id}", self.files.handle)

    async def handle(self, request: web.Request) -> web.Response:
        refused = self._check(request)
        if refused is not None:
            return refused
        length = request.content_length
        if length is not None and length > self.store.max_bytes:  # not read at all
            return _error(413, self.store.too_large(length))
        try:
            chunks, name = await _body(request)
            media = await self.store.receive(chunks, OWNER, name)
        except MediaTooLarge as err:
            return _error(413, str(err))
        except MediaRefused as err:
            return _error(415, str(err))
        log.info("web: stored upload %s (%s, %d bytes)", media.id[:16], media.type, media.bytes)
        return web.json_response(media_json(media))

    async def attachments(self, value: object) -> list[Media]:
        """What a ``send`` frame attaches, each an upload of this server; MediaRefused
        with what to say otherwise (and then the message is not stored)."""
        if value is None:
            return []
        if not isinstance(value, list) or not all(
                isinstance(v, str) and len(v) == MEDIA_ID_LEN for v in value):
            raise MediaRefused('"attachments" must be a list of ids the upload returned')
        if len(value) > MAX_ATTACHMENTS:
            raise MediaRefused(f"at most {MAX_ATTACHMENTS} attachments per message")
        ids = list(dict.fromkeys(v.lower() for v in value))
        return await self.store.attachable(ids, OWNER)


async def _body(request: web.Request) -> tuple[AsyncIterator[bytes], str | None]:
    """The file's bytes: the first file part of a multipart form, else the raw body; and its
    name: the part's filename, else the ``name`` query or the ``X-File-Name`` header (the
    store cleans it)."""
    name = request.query.get("name") or request.headers.get("X-File-Name")
    if request.content_type.startswith("multipart/"):
        reader = await request.multipart()
        while True:
            part = await reader.next()
            if part is None:
                raise MediaRefused("the form holds no file")
            if isinstance(part, BodyPartReader) and (part.filename or part.name == "file"):
                return _part_chunks(part), _form_name(part.filename) or name
    return request.content.iter_chunked(CHUNK), name


def _form_name(filename: str | None) -> str | None:
    """A form's file name as the person named it: browsers escape exactly the quote, CR and
    LF in it (WHATWG multipart/form-data encoding); anything else arrives as it was."""
    if filename is None:
        return None
    return filename.replace("%22", '"').replace("%0D", "\r").replace("%0A", "\n")


async def _part_chunks(part: BodyPartReader) -> AsyncIterator[bytes]:
    while chunk := await part.read_chunk(CHUNK):
        yield chunk


def _error(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)
