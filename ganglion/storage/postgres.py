"""The PostgreSQL backend (asyncpg): one pool, the same verbs and guarantees as SQLite's.

Transactions run one at a time, as SQLite's BEGIN IMMEDIATE makes them: the inbox's
exactly-once, the usage limits' check-then-write and the caches kept beside the rows rely on
it, and one daemon per database (``PgLock``) makes this process the only writer. Reads and
lone writes use the pool's other connections at once. A connection the server dropped (a
restart) is replaced: a read, or a statement that never reached the server, is tried again
on a new one; what may have reached it raises ``StorageError``, whose caller says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg

from ganglion.storage.backend import (
    Backend,
    Cursor,
    DatabaseUnreachable,
    MigrationFailed,
    StorageError,
    pass_on,
    split_sql,
    to_the_end,
)
from ganglion.storage.dialect import Translated, placeholders, postgres_ddl, translate
from ganglion.storage.migrations import MIGRATIONS, Migration

log = logging.getLogger(__name__)

CONNECTION_LOST = (asyncpg.PostgresConnectionError, asyncpg.InterfaceError,
                   asyncpg.CannotConnectNowError, asyncpg.AdminShutdownError, OSError)
"""A connection gone (the server restarted or went away), rather than a statement refused."""
RETRIES = 5
POOL_SIZE = 10
TRANSLATED_KEPT = 2000
"""Statements kept translated (an ``IN (?, ?, ...)`` of each length is one)."""


class PgCursor:
    """What one statement returned, shaped as aiosqlite's cursor (``Cursor``)."""

    def __init__(self, rows: list[Any], rowcount: int, lastrowid: int | None) -> None:
        self.rows = rows
        self.rowcount = rowcount
        self.lastrowid = lastrowid

    async def fetchall(self) -> list[Any]:
        return self.rows

    async def fetchone(self) -> Any:
        return self.rows[0] if self.rows else None


class _Sent:
    """A statement on its way: awaited, or entered with ``async with`` (as aiosqlite's)."""

    def __init__(self, work: Awaitable[PgCursor]) -> None:
        self._work = work

    def __await__(self) -> Generator[Any, None, PgCursor]:
        return self._work.__await__()

    async def __aenter__(self) -> PgCursor:
        return await self._work

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any, /) -> None:
        return None


class PgConn:
    """One pooled connection with the verbs of the SQLite connection (``Conn``)."""

    def __init__(self, db: PostgresDatabase, conn: asyncpg.Connection) -> None:
        self._db = db
        self._conn = conn

    def execute(self, sql: str, parameters: Any = (), /) -> _Sent:
        return _Sent(self._db._run(self._conn, sql, tuple(parameters)))

    async def executemany(self, sql: str, parameters: Any, /) -> None:
        args = [tuple(p) for p in parameters]
        if args:
            with _storage_errors():
                # Placeholders only: no RETURNING id (executemany returns no rows).
                await self._conn.executemany(placeholders(sql), args)


class PostgresDatabase(Backend):
    """A pool of asyncpg connections to one database, its schema migrated at open."""

    def __init__(self, pool: asyncpg.Pool, where: str) -> None:
        self.pool = pool
        self.where = where
        self.dialect = "postgres"
        self._lock = asyncio.Lock()
        self._statements: dict[str, Translated] = {}
        self._id_tables: frozenset[str] = frozenset()

    @classmethod
    async def open(cls, url: str, where: str,
                   migrations: list[Migration] | None = None) -> PostgresDatabase:
        """Connect (``DatabaseUnreachable`` naming the cause) and apply what is pending."""
        try:
            pool = await asyncpg.create_pool(url, min_size=1, max_size=POOL_SIZE,
                                             timeout=10, command_timeout=None)
        except (asyncpg.PostgresError, *CONNECTION_LOST, TimeoutError) as err:
            raise unreachable(err, where) from None
        db = cls(pool, where)
        try:
            await db._migrate(MIGRATIONS if migrations is None else migrations)
            db._id_tables = frozenset(r["table_name"] for r in await db.fetchall(
                "SELECT table_name FROM information_schema.columns WHERE column_name = 'id'"
                " AND is_identity = 'YES' AND table_schema = current_schema()"))
        except BaseException:
            await pool.close()
            raise
        return db

    async def close(self) -> None:
        with contextlib.suppress(*CONNECTION_LOST):
            await asyncio.wait_for(self.pool.close(), 5)
        self.pool.terminate()

    def _translated(self, sql: str) -> Translated:
        done = self._statements.get(sql)
        if done is None:
            if len(self._statements) >= TRANSLATED_KEPT:
                self._statements.clear()
            done = self._statements[sql] = translate(sql, self._id_tables)
        return done

    async def _run(self, conn: asyncpg.Connection, sql: str,
                   params: tuple[object, ...]) -> PgCursor:
        statement = self._translated(sql)
        with _storage_errors():
            if statement.returns_rows:
                rows = await conn.fetch(statement.text, *params)
                lastrowid = rows[0]["id"] if statement.returns_id and rows else None
                return PgCursor(rows, len(rows), lastrowid)
            tag = await conn.execute(statement.text, *params)
        return PgCursor([], _rowcount(tag), None)

    @asynccontextmanager
    async def transaction(
        self, after_commit: Callable[[], None] | None = None
    ) -> AsyncIterator[PgConn]:
        """BEGIN, the body, COMMIT; ROLLBACK when it raises. COMMIT and ROLLBACK run to
        their end before a cancel is passed on (see ``Database.transaction``)."""
        async with self._lock:
            conn = await self._begin()
            try:
                try:
                    yield PgConn(self, conn)
                except BaseException:
                    pass_on(*await to_the_end(_quietly(conn.execute("ROLLBACK"))))
                    raise
                error, cancel = await to_the_end(_control(conn, "COMMIT"))
                if error is None and after_commit is not None:
                    after_commit()
                if error is not None and not conn.is_closed():
                    _, late = await to_the_end(_quietly(conn.execute("ROLLBACK")))
                    cancel = cancel or late
                pass_on(_wrapped(error), cancel)
            finally:
                pass_on(*await to_the_end(_release(self.pool, conn)))

    async def _begin(self) -> asyncpg.Connection:
        """A connection inside BEGIN; a dropped one is replaced (nothing was done on it)."""
        for attempt in range(RETRIES):
            conn: asyncpg.Connection = await self._acquire()
            try:
                await conn.execute("BEGIN")
                return conn
            except CONNECTION_LOST as err:
                pass_on(*await to_the_end(_release(self.pool, conn)))
                await self._lost(err, attempt)
            except BaseException:
                pass_on(*await to_the_end(_release(self.pool, conn)))
                raise
        raise AssertionError("unreachable")  # _lost raises at the last attempt

    async def _acquire(self) -> asyncpg.Connection:
        for attempt in range(RETRIES):
            try:
                conn: asyncpg.Connection = await self.pool.acquire()
                return conn
            except (*CONNECTION_LOST, TimeoutError) as err:  # a new connection: not yet
                await self._lost(err, attempt)
            except asyncpg.PostgresError as err:  # a login refused since the start
                raise unreachable(err, self.where) from err
        raise AssertionError("unreachable")

    async def _lost(self, err: BaseException, attempt: int) -> None:
        """A connection was lost: the pool's others are as old, so all are replaced; the
        caller tries again after a pause, or gives up with StorageError at the last try."""
        log.warning("PostgreSQL at %s: connection lost (%s: %s); reconnecting", self.where,
                    type(err).__name__, err)
        await self.pool.expire_connections()
        if attempt + 1 >= RETRIES:
            raise StorageError(f"PostgreSQL at {self.where} is unreachable: {err}") from err
        await asyncio.sleep(0.1 * 2 ** attempt)  # a restarting server: 3 s in all

    async def _lone(self, sql: str, params: tuple[object, ...], retry_sent: bool) -> PgCursor:
        """One statement on a pooled connection, committed on its own."""
        for attempt in range(RETRIES):
            conn: asyncpg.Connection = await self._acquire()
            try:
                return await self._run(conn, sql, params)
            except StorageError as err:
                cause = err.__cause__
                # Tried again: a read, or a statement refused before it was sent (the
                # connection already closed); a write that may have reached the server is not.
                unsent = isinstance(cause, asyncpg.InterfaceError) and conn.is_closed()
                if not isinstance(cause, CONNECTION_LOST) or not (retry_sent or unsent):
                    raise
                await self._lost(cause, attempt)
            finally:
                pass_on(*await to_the_end(_release(self.pool, conn)))
        raise AssertionError("unreachable")

    async def write(self, sql: str, params: tuple[object, ...] = (),
                    then: Callable[[Cursor], None] | None = None) -> PgCursor:
        result: list[PgCursor] = []

        async def run() -> None:
            result.append(await self._lone(sql, params, retry_sent=False))

        error, cancel = await to_the_end(run())
        if error is None and then is not None:
            then(result[0])
        pass_on(error, cancel)
        return result[0]

    async def fetchall(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        return (await self._lone(sql, params, retry_sent=True)).rows

    async def fetchone(self, sql: str, params: tuple[object, ...] = ()) -> Any:
        rows = (await self._lone(sql, params, retry_sent=True)).rows
        return rows[0] if rows else None

    async def _migrate(self, migrations: list[Migration]) -> None:
        async with self.pool.acquire() as conn:
            await conn.execute(
                "CREATE TABLE IF NOT EXISTS migrations (number BIGINT PRIMARY KEY,"
                " name TEXT NOT NULL, applied_at DOUBLE PRECISION NOT NULL)")
        done = {r["number"] for r in await self.fetchall("SELECT number FROM migrations")}
        for m in sorted((m for m in migrations if m.number not in done),
                        key=lambda m: m.number):
            log.info("applying migration %04d_%s to %s", m.number, m.name, self.where)
            try:
                async with self.transaction() as conn:
                    for statement in split_sql(m.postgres or postgres_ddl(m.sql)):
                        await conn.execute(statement)
                    await conn.execute(
                        "INSERT INTO migrations (number, name, applied_at) VALUES (?, ?, ?)",
                        (m.number, m.name, time.time()))
            except StorageError as err:
                raise MigrationFailed(m.number, m.name, err) from err


def unreachable(err: BaseException, where: str) -> DatabaseUnreachable:
    """What a failed connect says: the cause named plainly, the password never shown."""
    if isinstance(err, asyncpg.InvalidPasswordError):
        return DatabaseUnreachable(
            f"PostgreSQL at {where} refused the login: check the user and password in "
            "database.url")
    if isinstance(err, asyncpg.InvalidCatalogNameError):
        return DatabaseUnreachable(
            f"PostgreSQL at {where}: the database does not exist; create it (createdb) or "
            "fix database.url")
    if isinstance(err, asyncpg.InvalidAuthorizationSpecificationError):
        return DatabaseUnreachable(f"PostgreSQL at {where} refused the login: {err}")
    if isinstance(err, asyncpg.PostgresError):
        return DatabaseUnreachable(f"PostgreSQL at {where}: {err}")
    return DatabaseUnreachable(
        f"cannot reach PostgreSQL at {where}: {type(err).__name__}: {err}; is the server "
        "running, and are the host and port in database.url right?")


def _rowcount(tag: str) -> int:
    """The rows a command changed, from its tag (``UPDATE 3``, ``INSERT 0 1``)."""
    last = tag.rsplit(" ", 1)[-1]
    return int(last) if last.isdigit() else 0


@contextlib.contextmanager
def _storage_errors() -> Generator[None, None, None]:
    """asyncpg's errors as StorageError (the driver's stay behind this module)."""
    try:
        yield
    except (asyncpg.PostgresError, *CONNECTION_LOST) as err:
        raise StorageError(f"{type(err).__name__}: {err}") from err


def _wrapped(error: BaseException | None) -> BaseException | None:
    if isinstance(error, asyncpg.PostgresError | asyncpg.InterfaceError | OSError):
        wrapped = StorageError(f"{type(error).__name__}: {error}")
        wrapped.__cause__ = error
        return wrapped
    return error


async def _control(conn: asyncpg.Connection, sql: str) -> None:
    await conn.execute(sql)


async def _quietly(work: Awaitable[object]) -> None:
    """A ROLLBACK on a connection that may be gone: the server rolls back without it."""
    with contextlib.suppress(asyncpg.PostgresError, *CONNECTION_LOST):
        await work


async def _release(pool: asyncpg.Pool, conn: asyncpg.Connection) -> None:
    """Back to the pool, to its end: a cancel that arrives meanwhile is passed on after
    (``pass_on``), never dropped."""
    with contextlib.suppress(*CONNECTION_LOST):
        await pool.release(conn)
