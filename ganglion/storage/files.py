"""The plain-text memory in data/: its layout, cached reads (re-read only when changed), locks."""

from __future__ import annotations

import asyncio
import secrets
import weakref
from dataclasses import dataclass
from pathlib import Path

from ganglion.storage.atomic import atomic_write

BASE_PROMPT = "BASE_PROMPT.txt"
MEMORIES = "MEMORIES.txt"
HEARTBEATS = "HEARTBEATS.txt"
SKILLS_DIR = "skills"
SCRIPTS_DIR = "scripts"
WEB_TOKEN = "web_token"
"""The generated web token, when web.token is empty (owner-only, made at first start)."""
DEFAULT_BASE_PROMPT = Path(__file__).resolve().parent.parent / "defaults" / BASE_PROMPT
"""The shipped base prompt, copied into a data folder that has none (edit the copy)."""


@dataclass(frozen=True, slots=True)
class _Cached:
    stamp: tuple[int, int, int, int]
    """(inode, mtime, ctime, size). An atomic write (ours, most editors') brings a new inode.
    ctime ticks with the same clock as mtime, so it adds nothing for an edit within one tick;
    it is there for an edit whose mtime was set back (``touch -d``, ``cp -p``, ``rsync -t``),
    since nothing but the kernel sets ctime. An in-place edit of the same size within one
    clock tick (a few ms) is not seen until the file next changes."""
    text: str


@dataclass(frozen=True, slots=True)
class Skill:
    """One note in data/skills/: its file name and first line (the index the prompt shows)."""

    name: str
    summary: str


class DataFiles:
    """Reads data/ files through a stat check; one lock per file for the tools that write."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self._cache: dict[Path, _Cached] = {}
        # Weak: a lock lives while someone holds or waits for it (``async with`` keeps it),
        # so the file tools' arbitrary paths do not pile up a lock each for good.
        self._locks: weakref.WeakValueDictionary[Path, asyncio.Lock] = (
            weakref.WeakValueDictionary())

    def ensure_layout(self) -> None:
        """Create data/ with its empty templates where missing (never overwrites)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        # Owner-only, as every data file the daemon creates: they hold what it knows about
        # the user (existing ones keep the mode their owner gave them).
        (self.data_dir / SKILLS_DIR).mkdir(mode=0o700, exist_ok=True)
        (self.data_dir / SCRIPTS_DIR).mkdir(mode=0o700, exist_ok=True)
        for name in (MEMORIES, HEARTBEATS):
            (self.data_dir / name).touch(mode=0o600, exist_ok=True)
        base = self.data_dir / BASE_PROMPT
        if not base.exists():
            atomic_write(base, DEFAULT_BASE_PROMPT.read_text(encoding="utf-8"), mode=0o644)

    def read(self, name: str) -> str:
        """The file's text ("" if missing); from the cache while the file is unchanged (one
        stat per turn, not a read)."""
        path = self.data_dir / name
        try:
            st = path.stat()
        except FileNotFoundError:
            self._cache.pop(path, None)
            return ""
        stamp = (st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)
        cached = self._cache.get(path)
        if cached is not None and cached.stamp == stamp:
            return cached.text
        text = self._load(path)
        self._cache[path] = _Cached(stamp, text)
        return text

    def _load(self, path: Path) -> str:
        return path.read_text(encoding="utf-8", errors="replace")

    def skills(self) -> list[Skill]:
        folder = self.data_dir / SKILLS_DIR
        if not folder.is_dir():
            return []
        result = []
        for path in sorted(folder.glob("*.md")):
            first = next((ln.strip("# ").strip() for ln in self.read(
                str(path.relative_to(self.data_dir))).splitlines() if ln.strip()), "")
            result.append(Skill(path.name, first[:200]))
        return result

    def lock(self, name: str) -> asyncio.Lock:
        """The lock that serialises every change to one file (the same object for as long
        as anyone holds or awaits it)."""
        path = self.data_dir / name
        lock = self._locks.get(path)
        if lock is None:
            lock = self._locks[path] = asyncio.Lock()
        return lock


def web_token(configured: str, data_dir: Path) -> str:
    """The configured token, else the one kept in data/web_token (generated once, mode 0600)."""
    if configured:
        return configured
    token = kept_web_token(data_dir)
    if token:
        return token
    token = secrets.token_urlsafe(32)
    atomic_write(_token_path(data_dir), token + "\n", mode=0o600)
    return token


def kept_web_token(data_dir: Path) -> str:
    """The token generated at a first start, "" when there is none (yet)."""
    try:
        return _token_path(data_dir).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return ""


def _token_path(data_dir: Path) -> Path:
    return data_dir / WEB_TOKEN
