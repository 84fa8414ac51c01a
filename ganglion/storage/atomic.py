"""The one atomic write: temp file, fsync, rename, folder fsync; readers see old or new."""

from __future__ import annotations

import os
from contextlib import suppress
from pathlib import Path


def atomic_write(path: Path, text: str, mode: int = 0o600) -> None:
    """Replace (or create) ``path`` with ``text``, its folder created where missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        replace_in(dir_fd, path.name, text.encode("utf-8"), mode)
    finally:
        os.close(dir_fd)


def replace_in(dir_fd: int, name: str, data: bytes, mode: int = 0o600) -> None:
    """Replace (or create) the file ``name`` in the open folder ``dir_fd`` with ``data``.

    The file gets exactly ``mode`` whatever the umask (a token or a config stays 0600). A
    symbolic link at ``name`` is replaced, never followed. The new file is a new inode and
    its mtime is later than the old one's, so caches keyed on its stat see every change. The
    folder is fsynced too: without it a crash can lose the rename though the data is on disk.
    """
    try:
        old_mtime: int | None = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mtime_ns
    except FileNotFoundError:
        old_mtime = None
    tmp = f".{name}.{os.getpid()}.{os.urandom(4).hex()}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                 0o600, dir_fd=dir_fd)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fchmod(fh.fileno(), mode)
            if old_mtime is not None:
                mtime = os.fstat(fh.fileno()).st_mtime_ns
                if mtime <= old_mtime:  # an edit within one clock tick, or a future mtime
                    os.utime(fh.fileno(), ns=(mtime, old_mtime + 1))
            os.fsync(fh.fileno())
        os.replace(tmp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=dir_fd)
        raise
    os.fsync(dir_fd)
