"""File tools confined to one workspace folder: read_file, write_file, list_dir, edit_file.

Place in the flow: the model's call -> ToolRunner (policy) -> these functions -> ``Workspace``,
which resolves every path one component at a time from an open handle on the workspace
folder with ``O_NOFOLLOW``: ``..``, absolute paths and symbolic links are refused before
anything is opened, and a link swapped in between a check and a use is never followed.
"""

from __future__ import annotations

import asyncio
import errno
import fnmatch
import io
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from ganglion.errors import BadArguments, ToolError
from ganglion.storage.atomic import replace_in
from ganglion.storage.files import DataFiles
from ganglion.tools.registry import ToolFunc


class Missing(ToolError):
    """The path (or a folder on it) does not exist."""


_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_LIST_LIMIT = 500


class Workspace:
    """A folder the tools may touch, and nothing outside it. Methods block: run them in a
    worker thread."""

    def __init__(self, root: Path, private: Sequence[str] = (),
                 private_files: Sequence[Path] = ()) -> None:
        self.root = Path(os.path.realpath(root))
        self.private = tuple(private)
        """Name patterns (fnmatch) of the daemon's own files: never shown nor touched."""
        self.private_files = tuple(private_files)
        """Files never shown nor touched whatever the name they are reached by (the config
        file): known by device and inode, looked up at each use, so a hard link to one, or
        one replaced since the start (``ganglion login`` rewrites the config), is known."""

    def _private_ids(self) -> set[tuple[int, int]]:
        ids = set()
        for path in self.private_files:
            with suppress(OSError):  # a file that is not there is nothing to hide
                st = os.stat(path)
                ids.add((st.st_dev, st.st_ino))
        return ids

    def _check_not_private(self, path: str, st: os.stat_result) -> None:
        if (st.st_dev, st.st_ino) in self._private_ids():
            raise ToolError(f"{path!r} is private to the daemon; file tools do not touch it")

    # -- paths -----------------------------------------------------------------------------

    def parts(self, path: str, *, allow_root: bool = False) -> list[str]:
        """The path's components, refusing anything that could leave the workspace."""
        if "\x00" in path:
            raise BadArguments("the path contains a NUL character")
        stripped = path.strip()
        if stripped.startswith(("/", "\\")) or (len(stripped) > 1 and stripped[1] == ":"):
            raise BadArguments(f"{path!r} is an absolute path; give a path relative to the "
                               "workspace, such as notes/todo.txt")
        if stripped.startswith("~"):
            raise BadArguments(f"{path!r} points into a home folder; give a path relative to the "
                               "workspace")
        parts = [p for p in stripped.replace("\\", "/").split("/") if p not in ("", ".")]
        if ".." in parts:
            raise BadArguments(f"{path!r} uses '..'; paths must stay inside the workspace")
        if not parts and not allow_root:
            raise BadArguments("give the path of a file inside the workspace")
        for i, part in enumerate(parts):
            if self.is_private(part) or self.is_private("/".join(parts[: i + 1])):
                raise BadArguments(f"{path!r} is private to the daemon; file tools do not "
                                   "touch it")
        return parts

    def is_private(self, name: str) -> bool:
        return any(fnmatch.fnmatchcase(name, pattern) for pattern in self.private)

    @contextmanager
    def folder(self, parts: Sequence[str], *, create: bool = False) -> Iterator[int]:
        """An open descriptor of the folder ``parts``, reached without following any link."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, part in enumerate(parts):
                try:
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except FileNotFoundError:
                    if not create:
                        raise Missing(f"{'/'.join(parts[: i + 1])} does not exist") from None
                    os.mkdir(part, 0o700, dir_fd=fd)
                    nxt = os.open(part, _DIR_FLAGS, dir_fd=fd)
                except OSError as err:
                    raise self._refused(fd, parts[: i + 1], err) from None
                os.close(fd)
                fd = nxt
            yield fd
        finally:
            os.close(fd)

    def _refused(self, dir_fd: int, parts: Sequence[str], err: OSError) -> ToolError:
        shown = "/".join(parts)
        try:
            target = os.readlink(parts[-1], dir_fd=dir_fd)
        except OSError:
            target = None
        if target is None:
            if err.errno == errno.ENOTDIR:
                return ToolError(f"{shown} is a file, not a folder")
            return ToolError(f"cannot open {shown}: {err.strerror}")
        resolved = Path(os.path.realpath(self.root.joinpath(*parts)))
        if resolved == self.root or self.root in resolved.parents:
            inside = resolved.relative_to(self.root).as_posix() or "."
            return ToolError(f"{shown} is a symbolic link; file tools do not follow links: "
                             f"use its target's path, {inside}")
        return ToolError(f"{shown} is a symbolic link leading outside the workspace; "
                         "refused")

    def _open_file(self, dir_fd: int, parts: Sequence[str], flags: int) -> int:
        try:
            return os.open(parts[-1], flags | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK,
                           dir_fd=dir_fd)
        except FileNotFoundError:
            raise Missing(f"{'/'.join(parts)} does not exist") from None
        except IsADirectoryError:
            raise BadArguments(f"{'/'.join(parts)} is a folder; use list_dir") from None
        except OSError as err:
            raise self._refused(dir_fd, parts, err) from None

    # -- operations ------------------------------------------------------------------------

    @contextmanager
    def _regular_file(self, path: str) -> Iterator[tuple[io.BufferedReader, os.stat_result]]:
        """A regular file inside the workspace, open for reading, with its stat."""
        parts = self.parts(path)
        with self.folder(parts[:-1]) as dfd:
            fd = self._open_file(dfd, parts, os.O_RDONLY)
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode):
                    raise BadArguments(f"{path} is not a regular file")
                self._check_not_private(path, st)
                yield fh, st

    def read_bytes(self, path: str, limit: int) -> tuple[bytes, int]:
        """Up to ``limit`` bytes of a regular file, and its size."""
        with self._regular_file(path) as (fh, st):
            return fh.read(limit), st.st_size

    def read_text(self, path: str, limit: int) -> str:
        """The whole file as UTF-8 text, for changing it: refused when larger than ``limit``
        bytes or not text (writing back a lossy decoding would damage it)."""
        data, size = self.read_bytes(path, limit + 1)
        if size > limit or len(data) > limit:
            raise BadArguments(f"{path} is {size:,} bytes; the limit is {limit:,}")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise BadArguments(f"{path} is not UTF-8 text; it can only be replaced whole") from None
        if "\x00" in text:
            raise BadArguments(f"{path} looks binary; it can only be replaced whole")
        return text

    def read_lines(self, path: str, start_line: int, limit: int) -> TextPart:
        """Whole lines from ``start_line`` on, up to about ``limit`` bytes (at least one
        line, cut at ``limit`` if it is longer)."""
        with self._regular_file(path) as (fh, st):
            if b"\x00" in fh.peek(8192)[:8192]:
                raise BadArguments(f"{path} looks binary ({st.st_size:,} bytes); read_file "
                                   "shows text only")
            line_no = 1
            while line_no < start_line:
                if not fh.readline():
                    raise BadArguments(f"{path} has only {line_no - 1} lines")
                line_no += 1
            out: list[bytes] = []
            used = 0
            while True:
                line = fh.readline(limit)  # never more than limit bytes at once
                if not line:
                    return TextPart(_decode(out), None, st.st_size)
                if out and used + len(line) > limit:
                    return TextPart(_decode(out), line_no, st.st_size)
                out.append(line)
                used += len(line)
                if len(line) == limit and not line.endswith(b"\n"):
                    while (rest := fh.readline(65536)) and not rest.endswith(b"\n"):
                        pass  # skip the rest of an over-long line
                    out.append(f"\n[line {line_no} is cut at {limit:,} bytes]\n".encode())
                    more = bool(fh.peek(1))
                    return TextPart(_decode(out), line_no + 1 if more else None, st.st_size)
                line_no += 1

    def write_text(self, path: str, text: str, *, mode: int = 0o600) -> bool:
        """Replace (or create) a file atomically (``replace_in``); True if it was created."""
        return self.write_bytes(path, text.encode("utf-8"), mode=mode)

    def write_bytes(self, path: str, data: bytes, *, mode: int = 0o600) -> bool:
        """``write_text`` for bytes (a PDF someone sent)."""
        parts = self.parts(path)
        with self.folder(parts[:-1], create=True) as dfd:
            name = parts[-1]
            try:
                old = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                old = None
            if old is not None and stat.S_ISDIR(old.st_mode):
                raise BadArguments(f"{path} is a folder")
            if old is not None and stat.S_ISLNK(old.st_mode):
                raise self._refused(dfd, parts, OSError(errno.ELOOP, "symbolic link"))
            if old is not None:
                self._check_not_private(path, old)
            replace_in(dfd, name, data, mode)
        return old is None

    def remove(self, path: str) -> None:
        """Delete a regular file (a folder or a link is refused, never followed)."""
        parts = self.parts(path)
        with self.folder(parts[:-1]) as dfd:
            try:
                st = os.stat(parts[-1], dir_fd=dfd, follow_symlinks=False)
            except FileNotFoundError:
                raise Missing(f"{path} does not exist") from None
            if not stat.S_ISREG(st.st_mode):
                raise BadArguments(f"{path} is not a regular file")
            self._check_not_private(path, st)
            os.unlink(parts[-1], dir_fd=dfd)

    def list(self, path: str) -> list[str]:
        parts = self.parts(path, allow_root=True)
        hidden = self._private_ids()
        with self.folder(parts) as dfd:
            entries = []
            with os.scandir(dfd) as it:
                for entry in it:
                    if self.is_private(entry.name):
                        continue
                    if entry.is_symlink():
                        entries.append((1, entry.name, f"{entry.name}  (symbolic link)"))
                    elif entry.is_dir(follow_symlinks=False):
                        entries.append((0, entry.name, entry.name + "/"))
                    else:
                        st = entry.stat(follow_symlinks=False)
                        if (st.st_dev, st.st_ino) in hidden:
                            continue
                        entries.append((1, entry.name, f"{entry.name}  ({st.st_size:,} bytes)"))
        entries.sort()
        return [shown for _, _, shown in entries]


@dataclass(frozen=True, slots=True)
class TextPart:
    text: str
    next_line: int | None
    """The line to read on from, or None at the end of the file."""
    size: int


def _decode(lines: list[bytes]) -> str:
    return b"".join(lines).decode("utf-8", errors="replace")


def replace_once(text: str, old: str, new: str, where: str) -> str:
    """``text`` with the one exact occurrence of ``old`` replaced; an error if absent or
    ambiguous."""
    if not old:
        raise BadArguments("old must not be empty: give the exact passage to replace")
    count = text.count(old)
    if count == 0:
        raise ToolError(f"the passage was not found in {where} (it must match exactly, "
                        "spaces and line breaks included); read the file first")
    if count > 1:
        raise ToolError(f"the passage occurs {count} times in {where}; include more of the "
                        "surrounding text so that it occurs once")
    return text.replace(old, new, 1)


class FileTools:
    """The file tools, over one workspace. Writes inside the data folder take the same
    per-file lock as the memory tools, so the two never lose each other's changes."""

    def __init__(
        self, workspace: Workspace, files: DataFiles, *, max_read_bytes: int,
        max_write_bytes: int,
    ) -> None:
        self.workspace = workspace
        self.files = files
        self.max_read_bytes = max_read_bytes
        self.max_write_bytes = max_write_bytes
        self._data_root = Path(os.path.realpath(files.data_dir))

    def tools(self) -> list[ToolFunc]:
        return [self.read_file, self.write_file, self.list_dir, self.edit_file]

    def _lock(self, path: str) -> asyncio.Lock:
        full = self.workspace.root.joinpath(*self.workspace.parts(path))
        try:
            return self.files.lock(full.relative_to(self._data_root).as_posix())
        except ValueError:  # a workspace outside the data folder
            return self.files.lock(str(full))

    async def read_file(self, path: str, start_line: int = 1) -> str:
        """Read a text file in the workspace. Long files come in parts: the answer says which
        line to start from to read on.

        Args:
            path: path relative to the workspace, such as notes/todo.txt
            start_line: first line to return (1 = the beginning)
        """
        if start_line < 1:
            raise ToolError("start_line counts from 1")
        part = await asyncio.to_thread(self.workspace.read_lines, path, start_line,
                                       self.max_read_bytes)
        text = part.text
        if part.next_line is not None:
            text += (f"\n[… {path} goes on ({part.size:,} bytes in all): call read_file with "
                     f"start_line={part.next_line} to read on]")
        return text if text else f"({path} is empty)"

    async def write_file(self, path: str, content: str) -> str:
        """Create or replace a text file in the workspace with content (folders are created
        as needed).

        Args:
            path: path relative to the workspace, such as notes/todo.txt
            content: the complete new text of the file
        """
        size = len(content.encode("utf-8"))
        if size > self.max_write_bytes:
            raise ToolError(f"content is {size:,} bytes; the limit is {self.max_write_bytes:,} "
                            "(tools.max_write_bytes)")
        async with self._lock(path):
            created = await asyncio.to_thread(self.workspace.write_text, path, content)
        return f"{'Created' if created else 'Replaced'} {path} ({size:,} bytes)."

    async def list_dir(self, path: str = ".") -> str:
        """List a folder of the workspace: sub-folders end with /, files show their size.

        Args:
            path: folder relative to the workspace; "." is the workspace itself
        """
        entries = await asyncio.to_thread(self.workspace.list, path)
        if not entries:
            return f"({path} is empty)"
        more = len(entries) - _LIST_LIMIT
        shown = "\n".join(entries[:_LIST_LIMIT])
        return shown + (f"\n[… and {more} more entries]" if more > 0 else "")

    async def edit_file(self, path: str, old: str, new: str) -> str:
        """Replace one exact passage of a text file in the workspace. The passage must occur
        exactly once; read the file first.

        Args:
            path: path relative to the workspace, such as notes/todo.txt
            old: the exact text to replace, spaces and line breaks included
            new: the text to put in its place
        """
        async with self._lock(path):
            text = await asyncio.to_thread(self.workspace.read_text, path, self.max_write_bytes)
            changed = replace_once(text, old, new, path)
            size = len(changed.encode("utf-8"))
            if size > self.max_write_bytes:
                raise ToolError(f"the result would be {size:,} bytes; the limit is "
                                f"{self.max_write_bytes:,} (tools.max_write_bytes)")
            await asyncio.to_thread(self.workspace.write_text, path, changed)
        return f"Edited {path}: replaced {len(old):,} characters with {len(new):,}."
