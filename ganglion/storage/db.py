"""The SQLite connection: explicit pragmas, numbered migrations, serialised write transactions."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
from collections.abc import AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Migration:
    number: int
    name: str
    sql: str


MIGRATIONS: list[Migration] = [  # applied once each, in order; recorded in ``migrations``
    Migration(
        1,
        "foundation",
        """
        CREATE TABLE inbox (
            id INTEGER PRIMARY KEY,
            thread_id TEXT NOT NULL,
            client_id TEXT NOT NULL,
            source TEXT NOT NULL,
            sender TEXT NOT NULL,
            text TEXT NOT NULL,
            system INTEGER NOT NULL DEFAULT 0,
            meta TEXT NOT NULL DEFAULT '{}',
            status TEXT NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'done')),
            created_at REAL NOT NULL,
            done_at REAL,
            UNIQUE (thread_id, client_id)
        );
        CREATE INDEX inbox_pending ON inbox (id) WHERE status = 'pending';

        CREATE TABLE messages (
            id INTEGER PRIMARY KEY,
            thread_id TEXT NOT NULL,
            role TEXT NOT NULL
                CHECK (role IN ('user', 'assistant', 'tool', 'summary', 'notice')),
            content TEXT NOT NULL,
            tool_calls TEXT,
            tool_call_id TEXT,
            name TEXT,
            inbox_id INTEGER REFERENCES inbox (id),
            in_context INTEGER NOT NULL DEFAULT 1,
            visible INTEGER NOT NULL DEFAULT 1,
            tokens INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL
        );
        CREATE INDEX messages_context ON messages (thread_id, id) WHERE in_context = 1;
        CREATE INDEX messages_visible ON messages (thread_id, id) WHERE visible = 1;
        CREATE UNIQUE INDEX messages_user_inbox ON messages (inbox_id) WHERE role = 'user';

        CREATE TABLE outbox (
            id INTEGER PRIMARY KEY,
            thread_id TEXT NOT NULL,
            message_id INTEGER NOT NULL REFERENCES messages (id),
            created_at REAL NOT NULL,
            delivered_at REAL
        );
        CREATE INDEX outbox_pending ON outbox (thread_id, id) WHERE delivered_at IS NULL;

        CREATE TABLE thread_settings (
            thread_id TEXT NOT NULL,
            key TEXT NOT NULL,
            value TEXT NOT NULL,
            PRIMARY KEY (thread_id, key)
        );
        """,
    ),
    Migration(
        2,
        "reminders",
        """
        CREATE TABLE reminders (
            id INTEGER PRIMARY KEY,
            thread_id TEXT NOT NULL,
            text TEXT NOT NULL,
            system INTEGER NOT NULL DEFAULT 0,
            cron TEXT,
            every_seconds REAL CHECK (every_seconds IS NULL OR every_seconds > 0),
            next_at REAL,
            status TEXT NOT NULL DEFAULT 'active'
                CHECK (status IN ('active', 'done', 'cancelled')),
            created_by TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            fired INTEGER NOT NULL DEFAULT 0,
            last_fired_at REAL,
            CHECK (status != 'active' OR next_at IS NOT NULL),
            CHECK (cron IS NULL OR every_seconds IS NULL)
        );
        CREATE INDEX reminders_due ON reminders (next_at) WHERE status = 'active';

        CREATE TABLE heartbeat_usage (
            day TEXT PRIMARY KEY,
            tokens INTEGER NOT NULL DEFAULT 0,
            reviews INTEGER NOT NULL DEFAULT 0,
            budget_noticed INTEGER NOT NULL DEFAULT 0
        );
        """,
    ),
    # There is no 0003, on purpose: a database records each migration by number, so numbers
    # are never reused or renumbered, and a gap is harmless (they run in number order).
    Migration(
        4,
        "endpoints_usage",
        """
        CREATE TABLE endpoints (
            name TEXT PRIMARY KEY,
            base_url TEXT NOT NULL,
            api_key TEXT NOT NULL,
            added_by TEXT NOT NULL,
            created_at REAL NOT NULL
        );

        CREATE TABLE models (
            id INTEGER PRIMARY KEY AUTOINCREMENT,
            name TEXT NOT NULL UNIQUE,
            first_seen REAL NOT NULL
        );

        CREATE TABLE endpoint_models (
            endpoint TEXT NOT NULL,
            model_id INTEGER NOT NULL REFERENCES models (id),
            position INTEGER NOT NULL,
            PRIMARY KEY (endpoint, model_id)
        );

        CREATE TABLE aliases (
            alias TEXT PRIMARY KEY,
            model TEXT NOT NULL,
            created_by TEXT NOT NULL,
            created_at REAL NOT NULL
        );

        CREATE TABLE usage (
            id INTEGER PRIMARY KEY,
            at REAL NOT NULL,
            account TEXT NOT NULL,
            sender TEXT NOT NULL,
            thread_id TEXT NOT NULL,
            source TEXT NOT NULL,
            kind TEXT NOT NULL CHECK (kind IN ('message', 'call')),
            model TEXT,
            endpoint TEXT,
            prompt_tokens INTEGER NOT NULL DEFAULT 0,
            completion_tokens INTEGER NOT NULL DEFAULT 0
        );
        CREATE INDEX usage_account
            ON usage (account, kind, at, prompt_tokens, completion_tokens);
        CREATE INDEX usage_thread ON usage (thread_id)
        """,
    ),
    Migration(
        5,
        "instance",
        """
        -- Tells this database apart from an earlier one at the same path (a reset): message
        -- ids start again at 1, so what is derived from them (Matrix transaction ids) must
        -- carry this too.
        CREATE TABLE instance (id TEXT NOT NULL);
        INSERT INTO instance (id) VALUES (lower(hex(randomblob(6))))
        """,
    ),
    Migration(
        6,
        "turn_steps",
        """
        -- A turn's tool exchange, kept step by step while the turn runs: a turn re-run after
        -- a crash resumes from here instead of calling its tools (set_reminder, shell) again.
        -- Gone when the turn's outcome is stored.
        CREATE TABLE turn_steps (
            inbox_id INTEGER NOT NULL REFERENCES inbox (id),
            seq INTEGER NOT NULL,
            message TEXT NOT NULL,
            PRIMARY KEY (inbox_id, seq)
        )
        """,
    ),
    Migration(
        7,
        "retention",
        """
        -- The keys of answered messages whose inbox row retention deleted: a resent id is
        -- still known (exactly once) for a fraction of the row's size.
        CREATE TABLE inbox_pruned (
            thread_id TEXT NOT NULL,
            client_id TEXT NOT NULL,
            PRIMARY KEY (thread_id, client_id)
        ) WITHOUT ROWID;
        -- Retention unlinks history from the inbox rows it deletes (history itself stays).
        CREATE INDEX messages_inbox ON messages (inbox_id) WHERE inbox_id IS NOT NULL
        """,
    ),
    Migration(
        8,
        "conversations",
        """
        -- The web conversations the page lists: a title (the first words until the model
        -- gives a short one, or the person's own), archived or not, and when last active.
        CREATE TABLE conversations (
            thread_id TEXT PRIMARY KEY,
            title TEXT NOT NULL,
            title_by TEXT NOT NULL DEFAULT 'words' CHECK (title_by IN ('words', 'model', 'person')),
            archived INTEGER NOT NULL DEFAULT 0,
            created_at REAL NOT NULL,
            last_active REAL NOT NULL
        );
        CREATE INDEX conversations_recent ON conversations (last_active);
        -- The web threads of earlier runs, titled by their first message.
        INSERT INTO conversations (thread_id, title, created_at, last_active)
            SELECT thread_id, substr(text, 1, 200), min(created_at), max(created_at)
            FROM inbox WHERE thread_id GLOB 'web_*' AND system = 0 GROUP BY thread_id
        """,
    ),
]


class Database:
    """One aiosqlite connection per file. Writes go through ``transaction()``, one at a time.

    Reads take the same lock: on one connection, a read between the statements of another
    coroutine's open transaction would see its uncommitted rows, rows that a rollback then
    takes back (a tab reconnecting during a turn's failed ``finish_turn`` would be shown
    messages that never existed). A transaction's body must not read through ``fetchall``
    or ``fetchone`` (the lock is not re-entrant): it reads through its own connection.
    """

    def __init__(self, conn: aiosqlite.Connection, path: Path) -> None:
        self.conn = conn
        self.path = path
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
            error, cancel = await _to_the_end(self._control("BEGIN IMMEDIATE"))
            if error is not None or cancel is not None:
                await self._roll_back()  # a BEGIN that succeeded after its caller left
                _pass_on(error, cancel)
            try:
                yield self.conn
            except BaseException:
                await self._roll_back()
                raise
            error, cancel = await _to_the_end(self._control("COMMIT"))
            if error is None and after_commit is not None:
                after_commit()
            if error is not None:
                await self._roll_back()  # a COMMIT that failed may leave it open (SQLITE_BUSY)
            _pass_on(error, cancel)

    async def _roll_back(self) -> None:
        """ROLLBACK when a transaction is open (SQLite ends one by itself on some errors)."""
        if not self.conn.in_transaction:
            return
        error, cancel = await _to_the_end(self._control("ROLLBACK"))
        _pass_on(error, cancel)

    async def _control(self, sql: str) -> None:
        await self.conn.execute(sql)  # no rows to read: one trip to aiosqlite's thread

    async def write(
        self,
        sql: str,
        params: tuple[object, ...] = (),
        then: Callable[[aiosqlite.Cursor], None] | None = None,
    ) -> aiosqlite.Cursor:
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

            error, cancel = await _to_the_end(run())
            if error is None and then is not None:
                then(result[0])
            _pass_on(error, cancel)
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

    async def instance_id(self) -> str:
        """This database's own random id, made with it (see migration 5)."""
        row = await self.fetchone("SELECT id FROM instance")
        return str(row["id"]) if row else "0"

    async def _migrate(self, migrations: list[Migration]) -> None:
        await self.conn.execute(
            "CREATE TABLE IF NOT EXISTS migrations ("
            " number INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL)"
        )
        done = {r["number"] for r in await self.fetchall("SELECT number FROM migrations")}
        for m in sorted(migrations, key=lambda m: m.number):
            if m.number in done:
                continue
            log.info("applying migration %04d_%s to %s", m.number, m.name, self.path.name)
            async with self.transaction() as conn:
                for statement in _split_sql(m.sql):
                    await conn.execute(statement)
                await conn.execute(
                    "INSERT INTO migrations (number, name, applied_at) VALUES (?, ?, unixepoch())",
                    (m.number, m.name),
                )


async def _to_the_end(
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


def _pass_on(error: BaseException | None, cancel: asyncio.CancelledError | None) -> None:
    """Raise what ``_to_the_end`` reported: the cancel first (the caller asked to stop)."""
    if cancel is not None:
        raise cancel from error
    if error is not None:
        raise error


def _split_sql(sql: str) -> list[str]:
    return [s.strip() for s in sql.split(";") if s.strip()]


def _create_private(path: Path) -> None:
    """Create the file readable by its owner only before SQLite opens it."""
    if not path.exists():
        fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
        os.close(fd)
    _chmod_private(path)


def _chmod_private(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.chmod(0o600)
