"""The media store: files that came with messages, once each under data/media/, by content.

Place in the flow: an interface streams an upload in (``receive``), a message names what it
attaches (``attachable``, then the inbox stores the references with the message), the worker
reads them back for the model (``of_inboxes``, ``path``), retention removes old files
(``prune``). The file's type is what its bytes are (``storage/media_kinds.py``), never
what its name or the client says; the name it came with is kept, cleaned, for the turn that
saves it into the workspace and for the page.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import secrets
import sqlite3
import time
from collections.abc import AsyncIterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ganglion.storage.backend import Backend
from ganglion.storage.media_kinds import Kind, UnknownType, clean_name, identify, kind_of

MEDIA_DIR = "media"
"""In the data folder: the files, named by their sha256."""
MEDIA_ID_LEN = 64
"""A media id is the sha256 of the bytes, in hex."""


_UNWANTED = ("NOT EXISTS (SELECT 1 FROM media_refs r JOIN inbox i ON i.id = r.inbox_id"
             " WHERE r.media_id = m.id AND i.status = 'pending')")
"""No unanswered message attaches media row ``m``: its turn is still to read the file."""


class MediaRefused(Exception):
    """An upload that is not stored; the text says why and what to do."""


class MediaTooLarge(MediaRefused):
    """Over ``media.max_bytes``: nothing stored."""


@dataclass(frozen=True, slots=True)
class Media:
    """One stored file, as the database records it."""

    id: str
    type: str
    bytes: int
    width: int | None = None
    height: int | None = None
    removed: bool = False
    """Retention removed the file: only this row is left."""
    name: str | None = None
    """The name the file last came with (cleaned: ``clean_name``), None when it came
    without one (a pasted image, a recording)."""

    @property
    def kind(self) -> str:
        """"image", "audio" or "file" (PDF, text): how a turn treats it."""
        return kind_of(self.type)

    @property
    def is_image(self) -> bool:
        return self.kind == "image"

    def describe(self) -> str:
        """A short stable description ("1200x800 PNG image"): the same text every time."""
        sub = self.type.split("/", 1)[-1].upper()
        size = f"{self.width}x{self.height} " if self.width and self.height else ""
        return f"{size}{sub} image" if self.is_image else f"{sub} {self.kind}"


def _media(r: sqlite3.Row) -> Media:
    return Media(r["id"], r["type"], r["bytes"], r["width"], r["height"],
                 r["removed_at"] is not None, r["name"])


def _identify(path: Path, name: str | None) -> Kind:
    try:
        return identify(path, name)
    except UnknownType as err:
        raise MediaRefused(str(err)) from None


class MediaStore:
    """Files under ``root`` named by their sha256, owner-only; their rows in conversation.db."""

    def __init__(self, db: Backend, root: Path, max_bytes: int) -> None:
        self.db = db
        self.root = root
        self.max_bytes = max_bytes
        self._placing = asyncio.Lock()
        """Held while a file is put in place with its row, or removed with it: retention
        never unlinks a file an upload of the same bytes has just brought back."""
        self._any: bool | None = None
        """Whether any file was ever stored (rows are never deleted): until one is, no turn
        asks which of its messages have attachments."""

    async def any_media(self) -> bool:
        if self._any is None:
            self._any = await self.db.fetchone("SELECT 1 FROM media LIMIT 1") is not None
        return self._any

    def path(self, media_id: str) -> Path:
        return self.root / media_id

    async def receive(self, chunks: AsyncIterable[bytes], owner: str,
                      name: str | None = None) -> Media:
        """Store what ``chunks`` yield, checking the size as it comes (a huge body is never
        held in memory) and the type once whole; ``name`` is the file's name as the sender
        gave it (cleaned here). Raises MediaTooLarge or MediaRefused, and then nothing is
        kept."""
        name = clean_name(name)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        tmp = self.root / f".upload-{secrets.token_hex(8)}"
        digest, size = hashlib.sha256(), 0
        try:
            fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
            with os.fdopen(fd, "wb") as out:
                async for chunk in chunks:
                    size += len(chunk)
                    if size > self.max_bytes:
                        raise MediaTooLarge(self.too_large(size, partial=True))
                    digest.update(chunk)
                    out.write(chunk)  # into the page cache: one fsync at the end, in a thread
                out.flush()
                await asyncio.to_thread(os.fsync, out.fileno())
            if size == 0:
                raise MediaRefused("the upload is empty")
            kind = await asyncio.to_thread(_identify, tmp, name)
            media_id = digest.hexdigest()
            async with self._placing:
                os.replace(tmp, self.path(media_id))  # the same bytes: one file, kept once
                now = time.time()
                async with self.db.transaction() as conn:
                    # The same bytes again under a new name: the new name is the one kept.
                    await conn.execute(
                        "INSERT INTO media (id, type, bytes, width, height, name, created_at,"
                        " last_used) VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO"
                        " UPDATE SET last_used = excluded.last_used, removed_at = NULL,"
                        " name = coalesce(excluded.name, media.name)",
                        (media_id, kind.type, size, kind.width, kind.height, name, now, now))
                    await conn.execute("INSERT INTO media_owners (media_id, owner)"
                                       " VALUES (?, ?) ON CONFLICT DO NOTHING",
                                       (media_id, owner))
                self._any = True
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        row = await self.db.fetchone("SELECT name FROM media WHERE id = ?", (media_id,))
        return Media(media_id, kind.type, size, kind.width, kind.height,
                     name=row["name"] if row else name)

    def too_large(self, size: int, partial: bool = False) -> str:
        what = f"more than {self.max_bytes:,}" if partial else f"{size:,}"
        return (f"the file is {what} bytes; the limit is {self.max_bytes:,} "
                "(media.max_bytes)")

    async def attachable(self, ids: Sequence[str], owner: str) -> list[Media]:
        """The media these ids name, in order, if ``owner`` sent each in and its file is
        still here; else MediaRefused naming the first that is not."""
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = await self.db.fetchall(
            f"SELECT m.* FROM media m JOIN media_owners o ON o.media_id = m.id"
            f" WHERE m.id IN ({marks}) AND o.owner = ? AND m.removed_at IS NULL",
            (*ids, owner))
        found = {r["id"]: _media(r) for r in rows}
        for media_id in ids:
            if media_id not in found:
                raise MediaRefused(f"unknown attachment {media_id[:16]!r}: upload it again")
        return [found[i] for i in ids]

    async def of_inboxes(self, inbox_ids: Sequence[int]) -> dict[int, list[Media]]:
        """The attachments of these inbox messages, in their order (messages without any
        are left out)."""
        out: dict[int, list[Media]] = {}
        ids = list(dict.fromkeys(inbox_ids))
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = await self.db.fetchall(
                "SELECT r.inbox_id, m.* FROM media_refs r JOIN media m ON m.id = r.media_id"
                f" WHERE r.inbox_id IN ({marks}) ORDER BY r.inbox_id, r.seq", tuple(chunk))
            for r in rows:
                out.setdefault(r["inbox_id"], []).append(_media(r))
        return out

    async def prune(self, keep_days: float, now: float | None = None) -> int:
        """Remove the files unused for ``keep_days`` that no unanswered message attaches
        (its turn must find them); their rows stay for the history. Returns files removed."""
        cutoff = (time.time() if now is None else now) - keep_days * 86_400
        rows = await self.db.fetchall(
            f"SELECT id FROM media m WHERE removed_at IS NULL AND last_used < ? AND {_UNWANTED}",
            (cutoff,))
        removed = 0
        for r in rows:
            # The row first: were the daemon to die between the two, a file would be left
            # over (found again by nothing), never a row naming a missing file as present.
            async with self._placing:
                cur = await self.db.write(
                    "UPDATE media AS m SET removed_at = ? WHERE id = ? AND last_used < ?"
                    f" AND removed_at IS NULL AND {_UNWANTED}", (time.time(), r["id"], cutoff))
                if cur.rowcount:
                    with contextlib.suppress(FileNotFoundError):
                        self.path(r["id"]).unlink()
                    removed += 1
        return removed

    async def readable(self, media_id: str, owner: str) -> Media | None:
        """The media ``owner`` may read back: what it sent in, or what a stored message
        attaches, queued or in history (``owner`` is the one person who sees every
        conversation and room: the web page's). None for anything else."""
        row = await self.db.fetchone(
            "SELECT m.* FROM media m WHERE m.id = ?1 AND (EXISTS (SELECT 1 FROM media_owners o"
            " WHERE o.media_id = m.id AND o.owner = ?2) OR EXISTS (SELECT 1 FROM media_refs r"
            " WHERE r.media_id = m.id) OR EXISTS (SELECT 1 FROM message_media h"
            " WHERE h.media_id = m.id))", (media_id, owner))
        return _media(row) if row is not None else None

    async def of_messages(self, message_ids: Sequence[int]) -> dict[int, list[Media]]:
        """The attachments of these history messages (user messages), in their order: through
        their inbox row, or kept for them once retention dropped it (``message_media``)."""
        out: dict[int, list[Media]] = {}
        ids = list(dict.fromkeys(message_ids))
        for start in range(0, len(ids), 500):
            chunk = tuple(ids[start:start + 500])
            marks = ",".join("?" * len(chunk))
            rows = await self.db.fetchall(
                "SELECT g.message_id, m.* FROM (SELECT h.id AS message_id, r.seq, r.media_id"
                " FROM messages h JOIN media_refs r ON r.inbox_id = h.inbox_id"
                f" WHERE h.id IN ({marks}) AND h.role = 'user'"
                " UNION ALL SELECT message_id, seq, media_id FROM message_media"
                f" WHERE message_id IN ({marks})) g JOIN media m ON m.id = g.media_id"
                " ORDER BY g.message_id, g.seq", chunk + chunk)
            for r in rows:
                out.setdefault(r["message_id"], []).append(_media(r))
        return out
