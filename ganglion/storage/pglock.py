"""One daemon per PostgreSQL database: an advisory lock held on a connection of its own."""

from __future__ import annotations

import contextlib
import hashlib

import asyncpg

from ganglion.storage.backend import DatabaseInUse, StorageError
from ganglion.storage.postgres import CONNECTION_LOST, unreachable


def lock_key(database: str) -> int:
    """The advisory lock's key: from the database's name (one daemon per database, whoever
    connects to it), as the signed 64-bit number PostgreSQL takes."""
    digest = hashlib.sha256(b"ganglion daemon " + database.encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


class PgLock:
    """pg_try_advisory_lock on a connection held for the daemon's life: the server lets go
    when that connection ends, also when the daemon is killed, so a dead one never blocks."""

    def __init__(self, url: str, where: str) -> None:
        self.url = url
        self.where = where
        self._conn: asyncpg.Connection | None = None

    async def acquire(self) -> None:
        """Take the lock, or raise DatabaseInUse naming the holder's address and pid."""
        try:
            conn = await asyncpg.connect(self.url, timeout=10)
        except (asyncpg.PostgresError, *CONNECTION_LOST, TimeoutError) as err:
            raise unreachable(err, self.where) from None
        try:
            name = await conn.fetchval("SELECT current_database()")
            key = lock_key(name)
            if await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
                self._conn = conn
                return
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
        if self._conn is not None:
            with contextlib.suppress(*CONNECTION_LOST, asyncpg.PostgresError):
                await self._conn.close(timeout=5)
            self._conn = None


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
