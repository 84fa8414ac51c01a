"""One daemon per data folder: an exclusive lock on data/ganglion.pid, held while it runs."""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

LOCK_FILE = "ganglion.pid"
"""In the data folder; holds the pid of the daemon that has the lock (for the message)."""


class DataFolderInUse(Exception):
    """Another process holds the data folder's lock; ``pid`` is the one it wrote, if any."""

    def __init__(self, data_dir: Path, pid: int | None) -> None:
        self.data_dir = data_dir
        self.pid = pid
        who = f"pid {pid}" if pid is not None else "a process whose pid is not written yet"
        super().__init__(
            f"another Ganglion ({who}) is running on the data folder {data_dir}; stop it, or "
            "give this one another paths.data_dir")


class DataLock:
    """flock(2) on the lock file: the kernel lets go when the holder exits, also on SIGKILL
    or a crash, so a pid left in the file by a dead daemon never blocks a start."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock and write our pid, or raise DataFolderInUse naming the holder."""
        # Not truncated at open: the file is the holder's until the lock is ours.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            try:
                raise DataFolderInUse(self.data_dir, _pid_in(fd)) from None
            finally:
                os.close(fd)
        except BaseException:
            os.close(fd)
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        """Let go (closing the file drops the lock); the pid stays, harmless without it."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _pid_in(fd: int) -> int | None:
    text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    return int(text) if text.isdigit() else None
