"""One daemon per PostgreSQL database: an advisory lock held on a connection of its own."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging

import asyncpg

from ganglion.storage.backend import DatabaseInUse, StorageError
from ganglion.storage.postgres import CONNECTION_LOST, unreachable

log = logging.getLogger(__name__)


def lock_key(database: str) -> int:
    """The advisory lock's key: from the database's name (one daemon per database, whoever
    connects to it), as the signed 64-bit number PostgreSQL takes."""
    digest = hashlib.sha256(b"ganglion daemon " + database.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PgLock:
    """pg_try_advisory_lock on a connection held for the daemon's life: the server lets go
    when that connection ends, also when the daemon is killed, so a dead one never blocks.

    A connection the server dropped (a restart) takes the lock with it: it is taken again
    at once on a new connection, in a task this lock owns (``release`` ends it).
    """

    def __init__(self, url: str, where: str) -> None:
        self.url = url
        self.where = where
        self._conn: asyncpg.Connection | None = None
        self._regain: asyncio.Task[None] | None = None

    async def acquire(self) -> None:
        """Take the lock, or raise DatabaseInUse naming the holder's address and pid."""
        self._conn = await self._take()
        self._conn.add_termination_listener(self._lost)

    def _lost(self, conn: asyncpg.Connection) -> None:
        if self._conn is conn and self._regain is None:  # not our own release
            log.warning("PostgreSQL at %s: the connection holding the database's lock was "
                        "lost; taking the lock again", self.where)
            self._conn = None
            self._regain = asyncio.get_running_loop().create_task(
                self._take_again(), name="database lock")

    async def _take_again(self) -> None:
        pause = 0.2
        while True:
            try:
                conn = await self._take()
            except DatabaseInUse as err:  # another daemon started meanwhile: say so, loudly
                log.error("%s (it started while this one's lock was lost: stop one of them)",
                          err)
                return
            except StorageError as err:  # the server is not back yet
                log.debug("the database's lock: %s; trying again in %.1f s", err, pause)
                await asyncio.sleep(pause)
                pause = min(pause * 2, 10.0)
                continue
            log.info("PostgreSQL at %s: the database's lock is held again", self.where)
            self._conn = conn
            self._regain = None
            conn.add_termination_listener(self._lost)
            return

    async def _take(self) -> asyncpg.Connection:
        try:
            conn = await asyncpg.connect(self.url, timeout=10)
        except (asyncpg.PostgresError, *CONNECTION_LOST, TimeoutError) as err:
            raise unreachable(err, self.where) from None
        try:
            name = await conn.fetchval("SELECT current_database()")
            key = lock_key(name)
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                return conn
            holder = await conn.fetchrow(
                "SELECT a.pid, a.client_addr::text AS addr, a.application_name FROM pg_locks l"
                " JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.locktype = 'advisory'"
                " AND l.granted AND l.objid = ($1::bigint & 4294967295)::oid"
                " AND l.classid = (($1::bigint >> 32) & 4294967295)::oid"
                " AND l.database = (SELECT oid FROM pg_database WHERE datname = $2)",
                key, name)
        except (asyncpg.PostgresError, *CONNECTION_LOST) as err:
            await conn.close()
            raise StorageError(f"PostgreSQL at {self.where}: {err}") from None
        await conn.close()
        who = (f"server process {holder['pid']}, connected from "
               f"{holder['addr'] or 'the local socket'}" if holder else "another connection")
        raise DatabaseInUse(
            f"another Ganglion is running on the database {self.where} ({who}); stop it, "
            "or give this one another database.url")

    async def release(self) -> None:
        if self._regain is not None:
            self._regain.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._regain
            self._regain = None
        conn, self._conn = self._conn, None  # first: its close is no loss to make good
        if conn is not None:
            with contextlib.suppress(*CONNECTION_LOST, asyncpg.PostgresError):
                await conn.close(timeout=5)


async def probe(url: str, where: str) -> str:
    """What ``ganglion doctor`` says of a reachable server: its version and the messages
    held (DatabaseUnreachable, naming the cause, when it cannot connect). Changes nothing."""
    try:
        conn = await asyncpg.connect(url, timeout=10)
    except (asyncpg.PostgresError, *CONNECTION_LOST, TimeoutError) as err:
        raise unreachable(err, where) from None
    try:
        version = await conn.fetchval("SHOW server_version")
        has = await conn.fetchval("SELECT to_regclass('messages') IS NOT NULL")
        held = await conn.fetchval("SELECT count(*) FROM messages") if has else None
    finally:
        await conn.close()
    return (f"{where}: PostgreSQL {version}, "
            + (f"{held:,} messages" if held is not None else "no tables yet (made at first "
               "start)"))
