"""``ganglion db copy --from URL --to URL``: the command's edge (the daemon stopped, both
databases named without their passwords); the copy itself is ``storage/copy.py``."""

from __future__ import annotations

import asyncio
import sys

from ganglion.config import LoadedConfig
from ganglion.config_database import check_url, shown_database
from ganglion.storage.backend import DatabaseInUse, MigrationFailed, StorageError
from ganglion.storage.connect import hold_database
from ganglion.storage.copy import CopyRefused, copy_database
from ganglion.storage.lock import DataFolderInUse, DataLock


def run_copy(loaded: LoadedConfig, source: str, target: str) -> int:
    """Exit status 0 with the rows per table on stdout; 1 with the reason on stderr."""
    try:
        for url in (source, target):
            check_url(url)
        if source == target:
            raise CopyRefused("--from and --to name the same database")
        lock = DataLock(loaded.data_dir)
        loaded.data_dir.mkdir(parents=True, exist_ok=True)
        lock.acquire()  # the daemon of this config stopped: nothing is written meanwhile
        try:
            copied = asyncio.run(_copy(loaded, source, target))
        finally:
            lock.release()
    except (ValueError, CopyRefused, DataFolderInUse, DatabaseInUse, StorageError,
            MigrationFailed) as err:
        print(f"ganglion db copy: {err}", file=sys.stderr)
        return 1
    width = max(map(len, copied), default=0)
    for name, rows in copied.items():
        print(f"{name:<{width}}  {rows:>10,}")
    print(f"copied {sum(copied.values()):,} rows in {len(copied)} tables from "
          f"{shown_database(source)} to {shown_database(target)}; the counts match")
    return 0


async def _copy(loaded: LoadedConfig, source: str, target: str) -> dict[str, int]:
    where = (shown_database(source), shown_database(target))
    releases = []
    try:
        for url, shown in zip((source, target), where, strict=True):
            if not url.startswith("sqlite:"):  # no daemon may write to it meanwhile
                releases.append(await hold_database(url, shown))
        return await copy_database(source, target, loaded.data_dir, where)
    finally:
        for release in releases:
            await release()
