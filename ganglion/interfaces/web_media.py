"""The web edge's media reads: GET /media/<id> gives the page a stored file back, with the
token, and the page's frames describe what a message attaches.

Why the response headers: the file came from outside (a person, a Matrix room), and the page
shows it from a ``blob:`` URL it fetched with the ``Authorization`` header (the token never
goes into a URL). The store holds only the types it identified by content; still, the type
is never sniffed (``nosniff``), the response runs nothing and loads nothing even if opened
on its own (a sandboxing ``Content-Security-Policy``), and what is not an image or audio is
a download (``attachment``). A file is named by its sha256: its bytes never change
(``immutable``), private to the browser that holds the token.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from aiohttp import web

from ganglion.interfaces.web_guard import BearerCheck
from ganglion.storage.history import StoredMessage
from ganglion.storage.media import Media, MediaStore

log = logging.getLogger(__name__)

OWNER = "web"
"""The page's person: what "web" uploaded, and what any stored message attaches (the page
reads every conversation and Matrix room)."""
ID_RE = re.compile(r"\A[0-9a-f]{64}\Z")
MEDIA_CSP = "default-src 'none'; sandbox; frame-ancestors 'none'; base-uri 'none'"
"""Nothing in a served file runs, loads or frames (an SVG or HTML would find no script)."""
INLINE = ("image", "audio")
"""Kinds shown in the page (a thumbnail, a player); every other file is a download."""


def attachment_json(media: Media) -> dict[str, Any]:
    """An attachment as the page's frames carry it."""
    return {"id": media.id, "type": media.type, "bytes": media.bytes,
            "width": media.width, "height": media.height, "name": file_name(media)}


def with_attachments(frame: dict[str, Any], attachments: list[dict[str, Any]]
                     ) -> dict[str, Any]:
    """``frame`` with its message's attachments, if it has any (a frame without stays as
    it was)."""
    if attachments:
        frame["attachments"] = attachments
    return frame


def file_name(media: Media) -> str:
    """The name the file came with (the store keeps it, cleaned), else one from its id."""
    if media.name:
        return media.name
    ext = media.type.split("/", 1)[-1].split(";", 1)[0].split("+", 1)[0]
    return f"{media.id[:12]}.{ext}"


def disposition(media: Media) -> str:
    """``Content-Disposition``: inline for images and audio, else a download; the name
    quoted (RFC 6266: an ASCII fallback, and the exact name in ``filename*``)."""
    kind = "inline" if media.kind in INLINE else "attachment"
    name = file_name(media)
    fallback = "".join(c if c.isascii() and c.isprintable() and c not in '"\\;' else "_"
                       for c in name)
    return f"{kind}; filename=\"{fallback}\"; filename*=UTF-8''{quote(name, safe='')}"


class MediaFiles:
    """GET /media/<id> of one web server, and the attachments of messages for its frames."""

    def __init__(self, store: MediaStore, check: BearerCheck) -> None:
        self.store = store
        self._check = check

    async def handle(self, request: web.Request) -> web.StreamResponse:
        refused = self._check(request)
        if refused is not None:
            return refused
        media_id = request.match_info["id"].lower()
        media = await self.store.readable(media_id, OWNER) if ID_RE.match(media_id) else None
        if media is None:
            return _error(404, "no such file")
        path = self.store.path(media.id)
        if media.removed or not path.is_file():
            return _error(410, "this file was removed after media.keep_days")
        return web.FileResponse(path, headers={
            "Content-Type": media.type,
            "Content-Disposition": disposition(media),
            "Content-Security-Policy": MEDIA_CSP,
            "X-Content-Type-Options": "nosniff",
            "Cache-Control": "private, max-age=31536000, immutable",
        })

    async def of_inboxes(self, inbox_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        """The attachments of these queued messages by inbox id, for the page (none asked
        for when no file was ever stored)."""
        if not inbox_ids or not await self.store.any_media():
            return {}
        found = await self.store.of_inboxes(inbox_ids)
        return {inbox_id: [attachment_json(m) for m in media] for inbox_id, media in found.items()}

    async def of_rows(self, rows: Sequence[StoredMessage]) -> dict[int, list[dict[str, Any]]]:
        """The attachments of a transcript's user messages, by message id."""
        users = [m.id for m in rows if m.role == "user"]
        if not users or not await self.store.any_media():
            return {}
        found = await self.store.of_messages(users)
        return {mid: [attachment_json(m) for m in media] for mid, media in found.items()}


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
