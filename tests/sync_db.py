"""A test's plain look into a daemon's database, on either backend, without the daemon.

SQLite through ``sqlite3``; PostgreSQL through asyncpg on a loop of its own in a worker
thread (the test's loop may be running), one connection per call. The SQL is SQLite's
spelling, translated as the daemon translates it (``ganglion.storage.dialect``).
"""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import asyncpg

from ganglion.storage.connect import sqlite_path
from ganglion.storage.dialect import placeholders


class SyncDb:
    def __init__(self, url: str, data_dir: Path) -> None:
        self.url = url
        self.path = sqlite_path(url, data_dir)

    @property
    def is_sqlite(self) -> bool:
        return self.path is not None

    def rows(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        if self.path is not None:
            conn = sqlite3.connect(self.path, timeout=10)
            try:
                return list(conn.execute(sql, params))
            finally:
                conn.close()
        return [tuple(r) for r in self._pg(lambda c: c.fetch(placeholders(sql), *params))]

    def insert(self, sql: str, params: tuple[Any, ...] = ()) -> int:
        """Run an INSERT; the new row's id."""
        if self.path is not None:
            with sqlite3.connect(self.path, timeout=10) as conn:
                rowid = conn.execute(sql, params).lastrowid
            conn.close()
            assert rowid is not None
            return rowid
        rowid = self._pg(lambda c: c.fetchval(placeholders(sql) + " RETURNING id", *params))
        return int(rowid)

    def execute(self, sql: str, params: tuple[Any, ...] = ()) -> None:
        if self.path is not None:
            with sqlite3.connect(self.path, timeout=10) as conn:
                conn.execute(sql, params)
            conn.close()
            return
        self._pg(lambda c: c.execute(placeholders(sql), *params))

    def _pg(self, work: Any) -> Any:
        async def run() -> Any:
            conn = await asyncpg.connect(self.url)
            try:
                return await work(conn)
            finally:
                await conn.close()

        with ThreadPoolExecutor(1) as pool:
            return pool.submit(asyncio.run, run()).result()
