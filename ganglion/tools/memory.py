"""Memory tools over data/: MEMORIES.txt, HEARTBEATS.txt, skills/*.md and scripts/*.

Place in the flow: the model's call -> ToolRunner -> these functions -> ``Workspace`` (atomic
writes, no links followed) under ``DataFiles.lock``, so every change to one file is made
in turn and two threads appending at once both land. The prompt notices the change through
the file's new stat (inode, mtime, ctime, size: ``DataFiles.read``) and re-reads only that
file.

The settings page edits the same files through ``load``, ``rewrite_if`` and ``remove_if``:
the same lock, checks, size cap and atomic write, plus a version (a hash of the text the edit
started from) so that an edit never overwrites what the assistant wrote meanwhile.
"""

from __future__ import annotations

import asyncio
import hashlib
import re

from ganglion.errors import BadArguments, ToolError
from ganglion.storage.files import HEARTBEATS, MEMORIES, SCRIPTS_DIR, SKILLS_DIR, DataFiles
from ganglion.tools.files import Missing, Workspace, replace_once
from ganglion.tools.registry import ToolFunc

_NOTE = re.compile(r"skills/[A-Za-z0-9][A-Za-z0-9_.-]{0,80}\.md"
                   r"|scripts/[A-Za-z0-9][A-Za-z0-9_.-]{0,80}")
_FOLDERS = (f"{SKILLS_DIR}/", f"{SCRIPTS_DIR}/")


def memory_file(name: str) -> str:
    """The canonical name of a memory file, or a ToolError saying which names exist."""
    name = name.strip()
    for canonical in (MEMORIES, HEARTBEATS):
        if name.upper() in (canonical.upper(), canonical.split(".")[0]):
            return canonical
    if _NOTE.fullmatch(name) and not name.endswith((".tmp", ".")):
        return name
    raise BadArguments(f"{name!r} is not a memory file: use MEMORIES.txt, HEARTBEATS.txt, "
                       "skills/<name>.md or scripts/<name> (letters, digits, . _ -)")


def version_of(text: str) -> str:
    """The version an edit starts from: a hash of the file's text ("" for a missing file)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]


class Conflict(ToolError):
    """The file no longer holds the version the edit started from; ``text`` is what it holds."""

    def __init__(self, name: str, text: str) -> None:
        super().__init__(f"{name} was changed meanwhile (by the assistant, or on disk), so your "
                         "edit was not saved. Its new text is shown; your edit is kept beside "
                         "it: merge the two and save again.")
        self.name = name
        self.text = text


class MemoryTools:
    """Read, append to, replace a passage in, and rewrite the memory files."""

    def __init__(self, files: DataFiles, workspace: Workspace, *, max_bytes: int) -> None:
        self.files = files
        self.workspace = workspace
        """Rooted at the data folder."""
        self.max_bytes = max_bytes

    def tools(self) -> list[ToolFunc]:
        return [self.memory_read, self.memory_append, self.memory_replace, self.memory_rewrite]

    async def _read(self, name: str, *, missing_ok: bool = False) -> str:
        try:
            return await asyncio.to_thread(self.workspace.read_text, name, self.max_bytes * 4)
        except Missing:
            if missing_ok or name in (MEMORIES, HEARTBEATS):
                return ""
            listing = await self._listing(name.split("/", maxsplit=1)[0] + "/")
            raise ToolError(f"{name} does not exist. {listing}") from None

    async def _listing(self, folder: str) -> str:
        try:
            entries = await asyncio.to_thread(self.workspace.list, folder)
        except ToolError:
            entries = []
        names = [e.split("  ")[0] for e in entries if not e.endswith("/")]
        if not names:
            return f"There is nothing in {folder} yet."
        return f"In {folder}: " + ", ".join(folder + n for n in names)

    async def _write(self, name: str, text: str) -> str:
        size = len(text.encode("utf-8"))
        if size > self.max_bytes:
            raise ToolError(f"{name} would be {size:,} bytes; the limit is {self.max_bytes:,} "
                            "(tools.memory_max_bytes): condense it with memory_rewrite first")
        mode = 0o700 if name.startswith(_FOLDERS[1]) else 0o600  # scripts are run
        await asyncio.to_thread(self.workspace.write_text, name, text, mode=mode)
        return f"{size:,} bytes"

    async def memory_read(self, file: str) -> str:
        """Read a memory file, or list skills/ or scripts/.

        Args:
            file: MEMORIES.txt, HEARTBEATS.txt, skills/<name>.md, scripts/<name>, or skills/
                or scripts/ for the list
        """
        if file.strip() in _FOLDERS or file.strip() in (SKILLS_DIR, SCRIPTS_DIR):
            return await self._listing(file.strip().rstrip("/") + "/")
        name = memory_file(file)
        return await self._read(name) or f"({name} is empty)"

    async def memory_append(self, file: str, text: str) -> str:
        """Add text at the end of a memory file (created if missing). Use it for a new fact
        in MEMORIES.txt or a new goal in HEARTBEATS.txt.

        Args:
            file: MEMORIES.txt, HEARTBEATS.txt, skills/<name>.md or scripts/<name>
            text: the text to add, usually one line
        """
        name = memory_file(file)
        if not text.strip():
            raise ToolError("text is empty: nothing to append")
        async with self.files.lock(name):
            current = await self._read(name, missing_ok=True)
            sep = "\n" if current and not current.endswith("\n") else ""
            size = await self._write(name, current + sep + text.rstrip("\n") + "\n")
        return f"Appended to {name} (now {size})."

    async def memory_replace(self, file: str, old: str, new: str) -> str:
        """Replace one exact passage of a memory file: correct an outdated fact, or remove it
        with an empty new. The passage must occur exactly once.

        Args:
            file: MEMORIES.txt, HEARTBEATS.txt, skills/<name>.md or scripts/<name>
            old: the exact text to replace, spaces and line breaks included
            new: the text to put in its place ("" removes the passage)
        """
        name = memory_file(file)
        async with self.files.lock(name):
            current = await self._read(name)
            size = await self._write(name, replace_once(current, old, new, name))
        return f"Replaced the passage in {name} (now {size})."

    async def memory_rewrite(self, file: str, text: str) -> str:
        """Replace the whole text of a memory file (or create a skill or script). Read the
        file first: whatever text leaves out is gone.

        Args:
            file: MEMORIES.txt, HEARTBEATS.txt, skills/<name>.md or scripts/<name>
            text: the complete new text
        """
        name = memory_file(file)
        async with self.files.lock(name):
            size = await self._write(name, text)
        return f"Rewrote {name} ({size})."

    # -- the settings page's edits ------------------------------------------------------

    async def load(self, file: str) -> str:
        """A memory file's text ("" when missing), for the settings page."""
        return await self._read(memory_file(file), missing_ok=True)

    async def rewrite_if(self, file: str, text: str, version: str) -> str:
        """``memory_rewrite`` when the file still holds the text of ``version`` (a new file:
        the version of ""), else Conflict; returns the new version."""
        name = memory_file(file)
        async with self.files.lock(name):
            current = await self._read(name, missing_ok=True)
            if version_of(current) != version:
                raise Conflict(name, current)
            await self._write(name, text)
        return version_of(text)

    async def remove_if(self, file: str, version: str) -> None:
        """Delete a skill that still holds the text of ``version``, else Conflict."""
        name = memory_file(file)
        if not name.startswith(_FOLDERS[0]):
            raise BadArguments(f"{name} cannot be deleted: only a skill can (empty it instead)")
        async with self.files.lock(name):
            current = await self._read(name)
            if version_of(current) != version:
                raise Conflict(name, current)
            await asyncio.to_thread(self.workspace.remove, name)
