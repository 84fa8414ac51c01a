"""What the storage modules ask of a database, whichever it is: SQLite (``db.py``) or
PostgreSQL (``postgres.py``). Plain SQL in the portable subset both run; the few places that
differ ask ``dialect``."""

from __future__ import annotations

import asyncio
import sqlite3
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Generator, Iterable
from contextlib import AbstractAsyncContextManager
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgres"]


class StorageError(sqlite3.Error):
    """A database refused or lost a statement (a PostgreSQL error, a dropped connection).

    A subclass of ``sqlite3.Error`` on purpose: every place that already says "the disk
    refused a write" for SQLite says it for PostgreSQL too, without knowing the driver.
    """


def why_refused(err: sqlite3.Error) -> str:
    """What a person is told a refused write means, for the database in use."""
    if isinstance(err, StorageError):
        return "The database server refused it or cannot be reached"
    return "The data folder refuses writes (full or read-only?)"


class DatabaseUnreachable(StorageError):
    """The server could not be reached or refused the login; the text says which."""


class DatabaseInUse(Exception):
    """Another daemon holds this database (PostgreSQL's advisory lock)."""


class MigrationFailed(Exception):
    """A migration failed: it was rolled back, so the database is as it was before it."""

    def __init__(self, number: int, name: str, error: Exception, copy: object = None) -> None:
        self.copy = copy
        where = f"; a copy from before the upgrade is at {copy}" if copy else ""
        super().__init__(
            f"migration {number:04d}_{name} failed: {error}. It was rolled "
            f"back: the database holds what it held before that migration{where}. Run the "
            "version of Ganglion that made it, or report the error")


class Cursor(Protocol):
    """What a statement's result offers (aiosqlite's cursor has it; so does postgres.py's)."""

    @property
    def rowcount(self) -> int: ...

    @property
    def lastrowid(self) -> int | None: ...

    async def fetchall(self) -> Iterable[Any]: ...

    async def fetchone(self) -> Any: ...


class Statement(Protocol):
    """A statement sent: awaited for its cursor, or entered with ``async with``."""

    def __await__(self) -> Generator[Any, None, Cursor]: ...

    async def __aenter__(self) -> Cursor: ...

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any, /) -> Any: ...


class Conn(Protocol):
    """A transaction's connection (aiosqlite's, or postgres.py's with the same verbs)."""

    def execute(self, sql: str, parameters: Any = ..., /) -> Statement: ...

    async def executemany(self, sql: str, parameters: Any, /) -> Any: ...


class Backend(ABC):
    """One database. Transactions run one at a time (the SQLite semantics the inbox's
    exactly-once relies on); reads see committed rows only."""

    dialect: Dialect
    where: str
    """What the database is, for messages: a file's name, or a URL without its password."""

    @abstractmethod
    def transaction(
        self, after_commit: Callable[[], None] | None = None
    ) -> AbstractAsyncContextManager[Conn]:
        """BEGIN, the body, COMMIT (ROLLBACK when it raises). ``after_commit`` runs once the
        COMMIT succeeded, also when the caller was cancelled meanwhile."""

    @abstractmethod
    async def write(self, sql: str, params: tuple[object, ...] = (),
                    then: Callable[[Cursor], None] | None = None) -> Cursor:
        """One statement committed on its own; ``then`` sees its cursor once it succeeded."""

    @abstractmethod
    async def fetchall(self, sql: str, params: tuple[object, ...] = ()) -> list[Any]:
        """Rows (by name and by position) of committed data."""

    @abstractmethod
    async def fetchone(self, sql: str, params: tuple[object, ...] = ()) -> Any:
        """The first row, or None."""

    @abstractmethod
    async def close(self) -> None: ...

    async def instance_id(self) -> str:
        """This database's own random id, made with it (see migration 5)."""
        row = await self.fetchone("SELECT id FROM instance")
        return str(row["id"]) if row else "0"


async def to_the_end(
    work: Coroutine[Any, Any, None],
) -> tuple[BaseException | None, asyncio.CancelledError | None]:
    """Await ``work`` to its end even when the caller is cancelled meanwhile.

    Returns the error ``work`` raised, if any, and the cancel that arrived meanwhile, if any:
    the caller passes the cancel on once it has settled what ``work`` left behind.
    """
    task = asyncio.ensure_future(work)
    cancel: asyncio.CancelledError | None = None
    while True:
        try:
            await asyncio.shield(task)
            return None, cancel
        except asyncio.CancelledError as err:
            if task.cancelled():  # the task itself (a loop shutting down): nothing to wait for
                raise
            cancel = err  # and wait on: the statement runs anyway
        except Exception as err:
            return err, cancel


def pass_on(error: BaseException | None, cancel: asyncio.CancelledError | None) -> None:
    """Raise what ``to_the_end`` reported: the cancel first (the caller asked to stop)."""
    if cancel is not None:
        raise cancel from error
    if error is not None:
        raise error


def split_sql(sql: str) -> list[str]:
    """The statements of a script, one by one: split at each ";" that ends a statement (a
    trigger's body holds several, so a piece is joined to the next until SQLite says the
    statement is complete)."""
    statements, pending = [], ""
    for piece in sql.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \n;"):
                statements.append(pending.strip())
            pending = ""
    if pending.strip(" \n;"):
        statements.append(pending.strip())
    return statements
