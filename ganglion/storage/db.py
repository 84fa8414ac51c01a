"""The SQLite backend: explicit pragmas, numbered migrations, serialised write transactions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import aiosqlite

from ganglion.storage.backend import (
    Backend,
    Cursor,
    MigrationFailed,
    pass_on,
    split_sql,
    to_the_end,
)
from ganglion.storage.migrations import MIGRATIONS, Migration
from ganglion.storage.snapshot import snapshot

__all__ = ["BACKUPS_DIR", "Database", "MigrationFailed"]

log = logging.getLogger(__name__)


BACKUPS_DIR = "backups"
"""In the data folder: the copies taken before an upgrade's migrations."""


class Database(Backend):
    """SQLite: one aiosqlite connection per file. Writes go through ``transaction()``, one
    at a time.

    Reads take the same lock: on one connection, a read between the statements of another
    coroutine's open transaction would see its uncommitted rows, rows that a rollback then
    takes back (a tab reconnecting during a turn's failed ``finish_turn`` would be shown
    messages that never existed). A transaction's body must not read through ``fetchall``
    or ``fetchone`` (the lock is not re-entrant): it reads through its own connection.
    """

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
        self.dialect = "sqlite"
        self.where = path.name
        self._lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path, migrations: list[Migration] | None = None) -> Database:
        path.parent.mkdir(parents=True, exist_ok=True)
        _create_private(path)
        conn = await aiosqlite.connect(path, isolation_level=None)
        conn.row_factory = sqlite3.Row
        # WAL: readers never block the writer. FULL: every commit is on disk before it
        # returns, so a message acknowledged is kept through a power cut too (NORMAL would
        # lose the last commits then). Measured: no change to the median web turn
        # (bench/README.md, Web).
        await conn.execute("PRAGMA journal_mode = WAL")
        await conn.execute("PRAGMA synchronous = FULL")
        await conn.execute("PRAGMA foreign_keys = ON")
        await conn.execute("PRAGMA busy_timeout = 5000")
        db = cls(conn, path)
        await db._migrate(MIGRATIONS if migrations is None else migrations)
        for suffix in ("-wal", "-shm"):
            _chmod_private(path.with_name(path.name + suffix))
        return db

    async def close(self) -> None:
        await self.conn.close()

    @asynccontextmanager
    async def transaction(
        self, after_commit: Callable[[], None] | None = None
    ) -> AsyncIterator[aiosqlite.Connection]:
        """BEGIN IMMEDIATE, the body, COMMIT; ROLLBACK if the body raises.

        Safe to cancel anywhere: BEGIN, COMMIT and ROLLBACK run to their end before a cancel
        is passed on (aiosqlite runs a queued statement whether or not its caller still
        waits), so the shared connection is never left inside a transaction.
        ``after_commit`` runs once COMMIT succeeded, also when the caller was cancelled
        meanwhile: the rows are there, so what mirrors them (a cache) must be updated.
        """
        async with self._lock:
            error, cancel = await to_the_end(self._control("BEGIN IMMEDIATE"))
            if error is not None or cancel is not None:
                await self._roll_back()  # a BEGIN that succeeded after its caller left
                pass_on(error, cancel)
            try:
                yield self.conn
            except BaseException:
                await self._roll_back()
                raise
            error, cancel = await to_the_end(self._control("COMMIT"))
            if error is None and after_commit is not None:
                after_commit()
            if error is not None:
                await self._roll_back()  # a COMMIT that failed may leave it open (SQLITE_BUSY)
            pass_on(error, cancel)

    async def _roll_back(self) -> None:
        """ROLLBACK when a transaction is open (SQLite ends one by itself on some errors)."""
        if not self.conn.in_transaction:
            return
        error, cancel = await to_the_end(self._control("ROLLBACK"))
        pass_on(error, cancel)

    async def _control(self, sql: str) -> None:
        await self.conn.execute(sql)  # no rows to read: one trip to aiosqlite's thread

    async def write(
        self,
        sql: str,
        params: tuple[object, ...] = (),
        then: Callable[[Cursor], None] | None = None,
    ) -> Cursor:
        """One statement, committed on its own (SQLite makes a lone statement atomic): a third
        of the round trips of BEGIN, statement, COMMIT. Waits for any open transaction.

        Like a transaction's COMMIT, the statement runs to its end before a cancel is passed
        on, and ``then`` sees its cursor whenever it succeeded (keep caches true to the rows).
        """
        async with self._lock:
            result: list[aiosqlite.Cursor] = []

            async def run() -> None:
                cursor = await self.conn.execute(sql, params)
                await cursor.close()  # rowcount and lastrowid stay readable
                result.append(cursor)

            error, cancel = await to_the_end(run())
            if error is None and then is not None:
                then(result[0])
            pass_on(error, cancel)
            return result[0]

    async def fetchall(self, sql: str, params: tuple[object, ...] = ()) -> list[sqlite3.Row]:
        """Committed rows only: waits for any open transaction (see the class)."""
        async with self._lock, self.conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def fetchone(self, sql: str, params: tuple[object, ...] = ()) -> sqlite3.Row | None:
        """Committed rows only: waits for any open transaction (see the class)."""
        async with self._lock, self.conn.execute(sql, params) as cur:
            row: sqlite3.Row | None = await cur.fetchone()
            return row

    async def _migrate(self, migrations: list[Migration]) -> None:
        await self.conn.execute(
            "CREATE TABLE IF NOT EXISTS migrations ("
            " number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        done = {r["number"] for r in await self.fetchall("SELECT number FROM migrations")}
        pending = sorted((m for m in migrations if m.number not in done), key=lambda m: m.number)
        # An upgrade changes a database that holds the user's history: a copy first (a new
        # database has nothing to lose).
        copy = await self._copy_before(pending[0]) if pending and done else None
        for m in pending:
            log.info("applying migration %04d_%s to %s", m.number, m.name, self.path.name)
            try:
                async with self.transaction() as conn:
                    for statement in split_sql(m.sql):
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO migrations (number, name, applied_at) "
                        "VALUES (?, ?, unixepoch())", (m.number, m.name))
            except sqlite3.Error as err:
                raise MigrationFailed(m.number, m.name, err, copy) from err

    async def _copy_before(self, first: Migration) -> Path:
        """A snapshot of the database in data/backups/, named for the migration it precedes."""
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target = self.path.parent / BACKUPS_DIR / (
            f"{self.path.stem}-{stamp}-before-{first.number:04d}.db")
        await asyncio.to_thread(snapshot, self.path, target)
        log.warning("%s is about to be upgraded (migration %04d_%s on): a copy from before is "
                    "at %s", self.path.name, first.number, first.name, target)
        return target


def _create_private(path: Path) -> None:
    """Create the file readable by its owner only before SQLite opens it."""
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    _chmod_private(path)


def _chmod_private(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.chmod(0o600)
