"""Files people send (PDF, text, CSV) saved into the workspace's ``inbox/``, where the file
tools reach them, and the one line that tells the model where they are.

Place in the flow: ``turn/attachments.py`` calls ``save`` for each file of a message before
the turn. The file keeps its name (cleaned by the media store; "report (2).pdf" when another
file has it), is written through the file tools' own ``Workspace`` (no link followed, the
daemon's private files never touched), and a PDF gets its text beside it
("report.pdf.txt"), read by ``turn/pdf_text.py`` in a child process with a deadline. The
inbox/ files are the person's: retention never removes them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import sys
from pathlib import PurePosixPath

from ganglion.errors import ToolError
from ganglion.storage.media import Media, MediaStore
from ganglion.tools.files import Missing, Workspace

log = logging.getLogger(__name__)

INBOX = "inbox"
EXTENSIONS = {"application/pdf": "pdf", "text/plain": "txt", "text/csv": "csv",
              "text/markdown": "md", "application/json": "json"}
MAX_PAGES = 500
"""A PDF's pages read for its text, at most."""
MAX_CHARS = 400_000
"""A PDF's text kept, at most (~100,000 tokens: the model reads it in parts)."""
PDF_SECONDS = 60.0
"""How long reading a PDF's text may take before the child is killed."""


def size_text(size: int) -> str:
    if size < 1000:
        return f"{size} bytes"
    if size < 1_000_000:
        return f"{size / 1000:.0f} kB"
    return f"{size / 1_000_000:.1f} MB"


class InboxFiles:
    """Saves a message's files into ``workspace``'s inbox/ folder."""

    def __init__(self, store: MediaStore, workspace: Workspace,
                 pdf_seconds: float = PDF_SECONDS) -> None:
        self.store = store
        self.workspace = workspace
        self.pdf_seconds = pdf_seconds

    async def save(self, media: Media) -> str:
        """The line the model reads for ``media``: "[file: inbox/x.pdf, 120 kB, 12 pages;
        text: inbox/x.pdf.txt]", or why it could not be saved."""
        try:
            data = await asyncio.to_thread(self.store.path(media.id).read_bytes)
            path = await asyncio.to_thread(self._place, media, data)
        except (OSError, ToolError) as err:
            log.warning("inbox: file %s not saved: %s", media.id[:16], err)
            return f"[file: {media.name or media.describe()}, could not be saved: {err}]"
        facts = [path, size_text(media.bytes)]
        if media.type == "application/pdf":
            facts += await self._pdf_text(path)
        elif media.type != "text/plain":
            facts.append(EXTENSIONS.get(media.type, "").upper())
        return f"[file: {', '.join(facts)}]"

    def _place(self, media: Media, data: bytes) -> str:
        """inbox/<name>, or "<stem> (n)<suffix>" when another file has the name; the same
        bytes already there (a re-run of the turn) are not written twice."""
        name = media.name or f"file-{media.id[:8]}.{EXTENSIONS.get(media.type, 'bin')}"
        try:
            self.workspace.parts(f"{INBOX}/{name}")
        except ToolError:  # a name the daemon keeps private (tools.private_files)
            name = f"file-{media.id[:8]}.{EXTENSIONS.get(media.type, 'bin')}"
        stem, suffix = PurePosixPath(name).stem, PurePosixPath(name).suffix
        digest = hashlib.sha256(data).hexdigest()
        for n in range(1, 1000):
            path = f"{INBOX}/{name if n == 1 else f'{stem} ({n}){suffix}'}"
            try:
                there, size = self.workspace.read_bytes(path, len(data) + 1)
            except Missing:
                self.workspace.write_bytes(path, data)
                return path
            if size == len(data) and hashlib.sha256(there).hexdigest() == digest:
                return path
        raise ToolError(f"{INBOX}/ holds too many files named {name}")

    async def _pdf_text(self, path: str) -> list[str]:
        """"12 pages", "text: <path>.txt"; or why the text could not be read."""
        real = self.workspace.root.joinpath(*PurePosixPath(path).parts)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "ganglion.turn.pdf_text", str(real), str(MAX_PAGES),
            str(MAX_CHARS), stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL)
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), self.pdf_seconds)
        except TimeoutError:
            return [f"its text could not be read within {self.pdf_seconds:g} s"]
        finally:
            if proc.returncode is None:  # the deadline, or the turn was stopped
                proc.kill()
                await proc.wait()
        try:
            result = json.loads(out)
        except ValueError:
            return [f"its text could not be read (the reader ended with {proc.returncode})"]
        if "error" in result:
            return [f"its text could not be read: {result['error']}"]
        pages = f"{result['pages']} page{'s' if result['pages'] != 1 else ''}"
        text = result["text"]
        if not text.strip() or not any(line.strip() and not line.startswith("--- page ")
                                       for line in text.splitlines()):
            return [pages, "no text in it (scanned?)"]
        if result["cut"]:
            text += f"\n[cut: the first {result['read']} of {result['pages']} pages]\n"
        await asyncio.to_thread(self.workspace.write_text, f"{path}.txt", text)
        return [pages, f"text: {path}.txt"]
