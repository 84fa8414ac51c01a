"""The SQLite connection: pragmas, and numbered migrations applied once, in place."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from ganglion.messages import ThreadId
from ganglion.storage.db import Database
from ganglion.storage.history import History, NewMessage
from ganglion.storage.migrations import MIGRATIONS


async def applied(db: Database) -> list[tuple[int, str]]:
    rows = await db.fetchall("SELECT number, name FROM migrations ORDER BY number")
    return [(r["number"], r["name"]) for r in rows]


async def tables(db: Database) -> set[str]:
    rows = await db.fetchall("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {r["name"] for r in rows}


async def test_pragmas_wal_full_sync_foreign_keys_busy_timeout(tmp_path: Path) -> None:
    """FULL: an acknowledged message is on disk, through a power cut too."""
    db = await Database.open(tmp_path / "conversation.db")
    try:
        pragmas = {name: (await db.fetchone(f"PRAGMA {name}"))[0]  # type: ignore[index]
                   for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")}
        assert pragmas == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 5000,
                           "synchronous": 2}  # 2 = FULL
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            await db.write("INSERT INTO outbox (thread_id, message_id, created_at) "
                           "VALUES ('web_00', 12345, 0)")
    finally:
        await db.close()
    # WAL is a property of the file: another program opening it sees it too.
    with sqlite3.connect(tmp_path / "conversation.db") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


async def test_migrations_apply_once(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "conversation.db"
    caplog.set_level(logging.INFO, logger="ganglion.storage.db")
    db = await Database.open(path)
    first = await db.fetchall("SELECT number, applied_at FROM migrations")
    await db.close()
    assert [m for m in caplog.messages if "applying migration" in m] == [
        f"applying migration {m.number:04d}_{m.name} to conversation.db" for m in MIGRATIONS]

    caplog.clear()
    db = await Database.open(path)  # the second start applies nothing
    try:
        assert [m for m in caplog.messages if "applying migration" in m] == []
        again = await db.fetchall("SELECT number, applied_at FROM migrations")
        assert [tuple(r) for r in again] == [tuple(r) for r in first]
        assert await applied(db) == [(m.number, m.name) for m in MIGRATIONS]
    finally:
        await db.close()


async def test_an_older_database_is_upgraded_in_place_keeping_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "conversation.db"
    old = await Database.open(path, migrations=MIGRATIONS[:1])  # as the first release made it
    await old.write("INSERT INTO inbox (thread_id, client_id, source, sender, text, status, "
                    "created_at) VALUES ('web_00', 'c1', 'web', 'web', 'hello', 'done', 1)")
    await old.write("INSERT INTO messages (thread_id, role, content, inbox_id, created_at) "
                    "VALUES ('web_00', 'user', 'hello', 1, 1)")
    assert await applied(old) == [(1, "foundation")]
    assert "reminders" not in await tables(old)
    await old.close()

    db = await Database.open(path)
    try:
        assert await applied(db) == [(m.number, m.name) for m in MIGRATIONS]
        assert {"reminders", "heartbeat_usage", "endpoints", "usage"} <= await tables(db)
        rows = await db.fetchall("SELECT thread_id, role, content FROM messages")
        assert [tuple(r) for r in rows] == [("web_00", "user", "hello")]
        inbox = await db.fetchall("SELECT client_id, text, status FROM inbox")
        assert [tuple(r) for r in inbox] == [("c1", "hello", "done")]
        # The new tables work alongside the old rows.
        await db.write("INSERT INTO reminders (thread_id, text, next_at, created_at) "
                       "VALUES ('web_00', 'tea', 10, 1)")
    finally:
        await db.close()


def test_migration_numbers_only_grow() -> None:
    """Numbers are what databases record: unique and increasing (0003 is left out on purpose,
    see ganglion/storage/db.py), never reused."""
    numbers = [m.number for m in MIGRATIONS]
    assert numbers == sorted(set(numbers))
    assert 3 not in numbers
    assert len({m.name for m in MIGRATIONS}) == len(MIGRATIONS)


class Boom(Exception):
    pass


async def test_a_read_never_sees_a_transaction_that_is_rolled_back(tmp_path: Path) -> None:
    """One connection for all: a read arriving mid-transaction waits for its end, so a tab
    reconnecting while a turn's writes fail is never shown rows that then vanish."""
    db = await Database.open(tmp_path / "conversation.db")
    history = History(db)
    tid = ThreadId("web_" + "ab" * 16)
    try:
        with pytest.raises(Boom):
            async with db.transaction() as conn:
                await conn.execute(
                    "INSERT INTO messages (thread_id, role, content, created_at)"
                    " VALUES (?, 'assistant', 'never happened', 0)", (tid,))
                reader = asyncio.create_task(history.transcript(tid))
                # Without the lock the read runs now, inside this transaction, and finishes.
                done, _ = await asyncio.wait({reader}, timeout=0.5)
                assert not done, "a read finished inside another coroutine's transaction"
                raise Boom
        assert await reader == []
        # Once committed, the same read sees the row.
        await history.finish_turn(tid, None, [NewMessage("assistant", "it happened")])
        assert [m.content for m in await history.transcript(tid)] == ["it happened"]
    finally:
        await db.close()


# -- cancellation inside a transaction -------------------------------------------------------

HOLD_WRITE_LOCK = """
import sqlite3, sys
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
conn.execute("COMMIT")
print("released", flush=True)
"""


class OtherProcess:
    """A second program holding the database's write lock (BEGIN IMMEDIATE) until released."""

    def __init__(self, path: Path) -> None:
        self.path = path

    async def __aenter__(self) -> OtherProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c", HOLD_WRITE_LOCK, str(self.path),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
        assert self.proc.stdout is not None
        assert await self.proc.stdout.readline() == b"locked\n"
        return self

    async def release(self) -> None:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(b"go\n")
        await self.proc.stdin.drain()
        assert await self.proc.stdout.readline() == b"released\n"
        assert await self.proc.wait() == 0

    async def __aexit__(self, *exc: object) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def on_statement(db: Database, starts: str, then: Callable[[], None]) -> Awaitable[None]:
    """Call ``then`` on the loop when the connection next starts running a statement that
    starts with ``starts`` (SQLite's trace hook: before the statement waits for any lock);
    once."""
    loop = asyncio.get_running_loop()
    seen = threading.Event()

    def trace(sql: str) -> None:
        if sql.startswith(starts) and not seen.is_set():
            seen.set()
            loop.call_soon_threadsafe(then)

    return db.conn.set_trace_callback(trace)


TID = ThreadId("web_" + "cd" * 16)


async def test_a_cancel_while_begin_waits_for_the_lock_leaves_no_transaction_open(
    tmp_path: Path,
) -> None:
    """Window A: a Stop lands while BEGIN IMMEDIATE waits for another program's write lock.
    aiosqlite runs the BEGIN anyway once the lock is free; the connection must not be left
    inside that transaction (every later transaction would fail)."""
    path = tmp_path / "conversation.db"
    db = await Database.open(path)
    await db.write("PRAGMA busy_timeout = 600000")  # BEGIN waits for the release, however slow
    history = History(db)
    try:
        async with OtherProcess(path) as other:
            begun = asyncio.Event()
            await on_statement(db, "BEGIN", begun.set)
            turn = asyncio.create_task(
                history.finish_turn(TID, None, [NewMessage("assistant", "stopped")]))
            await begun.wait()  # the BEGIN runs, and waits for the other program's lock
            turn.cancel()
            await other.release()
            with pytest.raises(asyncio.CancelledError):
                await turn
        await history.finish_turn(TID, None, [NewMessage("assistant", "next")])
        assert not db.conn.in_transaction
        assert [m.content for m in await history.transcript(TID)] == ["next"]
    finally:
        await db.close()
    with sqlite3.connect(path) as conn:  # committed for every program, not only ours
        assert conn.execute("SELECT content FROM messages").fetchall() == [("next",)]


async def test_a_cancel_while_commit_is_pending_still_updates_the_context_cache(
    tmp_path: Path,
) -> None:
    """Window B: a Stop lands after the turn's rows were written, while its COMMIT waits its
    turn on aiosqlite's single worker thread (behind a read the test holds open). The COMMIT
    runs anyway, so the cached context must show the answer as the database does."""
    db = await Database.open(tmp_path / "conversation.db")
    history = History(db)
    release = threading.Event()
    entered = asyncio.Event()
    loop = asyncio.get_running_loop()

    def block() -> int:
        loop.call_soon_threadsafe(entered.set)
        release.wait()
        return 1

    async def read_held_open() -> None:
        async with db.conn.execute("SELECT block()") as cur:
            await cur.fetchall()

    await db.conn.create_function("block", 0, block)
    await history.finish_turn(TID, None, [NewMessage("assistant", "earlier")])
    assert [m.content for m in await history.context(TID)] == ["earlier"]  # now cached
    reader: list[asyncio.Task[None]] = []
    try:
        # The read is queued right after the turn's last write, before the turn's COMMIT.
        await on_statement(db, "INSERT INTO messages",
                           lambda: reader.append(asyncio.create_task(read_held_open())))
        turn = asyncio.create_task(
            history.finish_turn(TID, None, [NewMessage("assistant", "answer")]))
        await entered.wait()  # the turn's body is done: it waits for its COMMIT
        turn.cancel()
        release.set()
        await reader[0]
        with pytest.raises(asyncio.CancelledError):
            await turn
        rows = await db.fetchall("SELECT content FROM messages ORDER BY id")
        assert [r["content"] for r in rows] == ["earlier", "answer"]  # committed
        assert not db.conn.in_transaction
        assert [m.content for m in await history.context(TID)] == ["earlier", "answer"]
    finally:
        release.set()
        await db.close()
