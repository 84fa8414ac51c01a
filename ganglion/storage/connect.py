"""Open the database a URL names (``database.url``): a SQLite file, or a PostgreSQL server
held by this daemon alone (an advisory lock on a connection of its own)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from ganglion.storage.backend import Backend
from ganglion.storage.db import Database
from ganglion.storage.migrations import Migration

SQLITE = "sqlite:///"


def sqlite_path(url: str, data_dir: Path) -> Path | None:
    """The file of a ``sqlite:///`` URL (relative to the data folder), None for a server."""
    if not url.startswith(SQLITE):
        return None
    path = Path(url[len(SQLITE):]).expanduser()
    return path if path.is_absolute() else data_dir / path


async def open_database(url: str, data_dir: Path, where: str,
                        migrations: list[Migration] | None = None) -> Backend:
    """The database ``url`` names, migrated; ``where`` names it in messages (no password)."""
    path = sqlite_path(url, data_dir)
    if path is not None:
        return await Database.open(path, migrations)
    # Imported here: a daemon on SQLite never loads the driver (its memory, its start).
    from ganglion.storage.postgres import PostgresDatabase  # noqa: PLC0415
    return await PostgresDatabase.open(url, where, migrations)


async def hold_database(url: str, where: str) -> Callable[[], Awaitable[None]]:
    """This daemon alone on a PostgreSQL database (``DatabaseInUse`` otherwise); returns
    what lets go. SQLite's file needs nothing more than the data folder's lock."""
    from ganglion.storage.pglock import PgLock  # noqa: PLC0415  (as above)
    lock = PgLock(url, where)
    await lock.acquire()
    return lock.release


async def probe_database(url: str, where: str) -> str:
    """A PostgreSQL server's version and messages, for ``ganglion doctor``."""
    from ganglion.storage.pglock import probe  # noqa: PLC0415  (as above)
    return await probe(url, where)
