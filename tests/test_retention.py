"""Bounded growth: retention prunes what is needed only for a while; per-file locks go."""

from __future__ import annotations

import asyncio
import re
import time
import weakref
from pathlib import Path

import pytest
from conftest import AppFactory, OpenDb, eventually

from ganglion.config import ConfigError, parse_config
from ganglion.messages import Inbound, Source, ThreadId
from ganglion.storage.backend import Backend
from ganglion.storage.db import Database
from ganglion.storage.files import DataFiles
from ganglion.storage.history import History, NewMessage
from ganglion.storage.inbox import Inbox
from ganglion.storage.outbox import Outbox
from ganglion.storage.retention import DAY, Pruned, Retention

TID = ThreadId("web_" + "ef" * 16)


def web(client_id: str, text: str) -> Inbound:
    return Inbound(TID, text, sender="web", source=Source.WEB, client_id=client_id,
                   meta={"tab": "t1"})


async def answer(db: Backend, client_id: str, text: str) -> Inbound:
    """A message stored, answered and its answer delivered, through the storage verbs."""
    msg, new = await Inbox(db).add(web(client_id, text))
    assert new
    history = History(db)
    await history.begin_turn(msg, text)
    queued = await history.finish_turn(TID, msg.id, [NewMessage("assistant", "re: " + text,
                                                                deliver=True)])
    outbox = Outbox(db)
    ids = [oid for oid, _ in await outbox.pending(TID)]
    assert len(ids) == len(queued) == 1
    await outbox.mark_delivered(ids)
    return msg


async def inbox_rows(db: Backend) -> list[tuple[str, str, str, str]]:
    rows = await db.fetchall("SELECT client_id, text, meta, status FROM inbox ORDER BY id")
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def pruned_keys(db: Backend) -> list[tuple[str, str]]:
    rows = await db.fetchall("SELECT thread_id, client_id FROM inbox_pruned ORDER BY 2")
    return [tuple(r) for r in rows]  # type: ignore[misc]


async def test_old_rows_are_pruned_and_what_exactly_once_and_history_need_stays(
    open_db: OpenDb,
) -> None:
    db = await open_db()
    try:
        answered = await answer(db, "c1", "hello")
        # A step left by a run that lost the race to answer (finish_turn drops its own).
        await History(db).add_step(answered.id, 0, NewMessage("assistant", "left over"))
        pending, _ = await Inbox(db).add(web("c2", "still unanswered"))
        await History(db).add_step(pending.id, 0, NewMessage("assistant", "resume from here"))
        await History(db).finish_turn(TID, None, [NewMessage("assistant", "for a closed tab",
                                                             deliver=True)])
        await db.write("INSERT INTO usage (at, account, sender, thread_id, source, kind)"
                       " VALUES (1, 'web', 'web', ?, 'web', 'message')", (TID,))
        before = [m.content for m in await History(db).transcript(TID)]
        context = [m.content for m in await History(db).context(TID)]
        retention = Retention(db, keep_days=30)

        # 29 days on, all of it is kept (the pass ran: it had every row to look at).
        assert await retention.prune(now=time.time() + 29 * DAY) == Pruned()
        assert await inbox_rows(db) == [("c1", "hello", '{"tab": "t1"}', "done"),
                                        ("c2", "still unanswered", '{"tab": "t1"}', "pending")]

        # 31 days on: the answered message's row goes but for its key, and so do the step it
        # left and its delivered outbox row; the unanswered message, its step and the
        # undelivered reply stay, and so do history and usage.
        assert await retention.prune(now=time.time() + 31 * DAY) == Pruned(1, 1, 1)
        assert await inbox_rows(db) == [("c2", "still unanswered", '{"tab": "t1"}', "pending")]
        assert await pruned_keys(db) == [(TID, "c1")]
        assert await History(db).steps(answered.id) == []
        assert [m.content for m in await History(db).steps(pending.id)] == ["resume from here"]
        assert [m.content for _, m in await Outbox(db).pending(TID)] == ["for a closed tab"]
        assert [m.content for m in await History(db).transcript(TID)] == before
        assert [m.content for m in await History(db).context(TID)] == context
        assert (await db.fetchone("SELECT count(*) FROM usage"))[0] == 1  # type: ignore[index]

        # Exactly once: a client resending the answered id a year later is not run again.
        assert await Inbox(db).add(web("c1", "hello")) == (web("c1", "hello"), False)
        assert [new for _, new in await Inbox(db).add_many([web("c1", "hello"),
                                                            web("c3", "new")])] == [False, True]
        assert await Inbox(db).known(TID, ["c1", "c2", "c4"]) == {"c1", "c2"}
        assert [m.client_id for m in await Inbox(db).pending()] == ["c2", "c3"]

        assert await retention.prune(now=time.time() + 31 * DAY) == Pruned()  # done is done
    finally:
        await db.close()


async def test_pruning_goes_in_small_batches_each_committed_on_its_own(tmp_path: Path) -> None:
    """Never one long transaction: each batch commits on its own (the outbox's in one
    statement, the inbox's in one short transaction), so a turn waits for one batch at
    most."""
    db = await Database.open(tmp_path / "conversation.db")  # SQLite's trace shows each statement
    try:
        for i in range(25):
            await answer(db, f"c{i}", f"message {i}")
        statements: list[str] = []
        await db.conn.set_trace_callback(statements.append)
        pruned = await Retention(db, keep_days=1, batch=10).prune(now=time.time() + 2 * DAY)
        await db.conn.set_trace_callback(None)
        assert pruned == Pruned(inbox=25, steps=0, outbox=25)

        def sizes(starts: str) -> list[int]:  # the trace shows the values: count the ids
            return [len(re.search(r"IN \(([^)]*)\)", s)[1].split(","))  # type: ignore[index]
                    for s in statements if s.startswith(starts)]

        assert sizes("DELETE FROM outbox") == [10, 10, 5]
        assert sizes("DELETE FROM inbox") == [10, 10, 5]
        assert [s for s in statements if s.startswith(("BEGIN", "COMMIT"))] == [
            "BEGIN IMMEDIATE", "COMMIT"] * 3  # one short transaction per inbox batch
        assert await inbox_rows(db) == []
        assert len(await pruned_keys(db)) == 25
    finally:
        await db.close()


async def test_keep_days_null_keeps_everything(open_db: OpenDb) -> None:
    db = await open_db()
    try:
        await answer(db, "c1", "hello")
        retention = Retention(db, keep_days=None)
        retention.start()  # no task to own
        assert await retention.prune(now=time.time() + 3650 * DAY) == Pruned()
        await retention.stop()
        assert await inbox_rows(db) == [("c1", "hello", '{"tab": "t1"}', "done")]
    finally:
        await db.close()


async def test_pruning_runs_at_start_and_then_once_a_day(open_db: OpenDb) -> None:
    db = await open_db()
    asked: asyncio.Queue[float] = asyncio.Queue()
    next_day = asyncio.Event()

    async def sleep(seconds: float) -> None:  # the day passes when the test says so
        await asked.put(seconds)
        await next_day.wait()
        next_day.clear()

    retention = Retention(db, keep_days=30, clock=lambda: time.time() + 31 * DAY, sleep=sleep)
    try:
        await answer(db, "c1", "first")
        retention.start()
        assert await asked.get() == DAY  # the first pass is done and it waits a day
        assert await pruned_keys(db) == [(TID, "c1")]
        await answer(db, "c2", "second")
        next_day.set()
        assert await asked.get() == DAY
        assert await pruned_keys(db) == [(TID, "c1"), (TID, "c2")]
        assert await inbox_rows(db) == []
    finally:
        await retention.stop()  # cancels the wait for the next day
        await db.close()


async def test_the_app_prunes_at_start(tmp_path: Path, app_factory: AppFactory,
                                       open_db: OpenDb) -> None:
    """The composition root starts the retention task: a row answered long ago goes (its key
    kept) soon after start, and the log says what went."""
    db = await open_db()
    await answer(db, "c1", "long ago")
    await db.write("UPDATE inbox SET done_at = 0")
    await db.write("UPDATE outbox SET delivered_at = 0")
    await db.close()

    app = await app_factory({"storage": {"keep_days": 30}})

    log = tmp_path / "logs" / "ganglion.log"
    await eventually(lambda: "retention: " in log.read_text())  # the first pass is over
    assert ("retention: 1 answered messages (their ids kept), 0 tool steps,"
            " 1 delivered outbox rows and 0 media files pruned in ") in log.read_text()
    assert await inbox_rows(app.db) == []
    assert await pruned_keys(app.db) == [(TID, "c1")]
    assert await app.db.fetchall("SELECT id FROM outbox") == []
    assert (await app.db.fetchone("SELECT count(*) AS n FROM messages"))["n"] == 2


async def test_per_file_locks_do_not_accumulate(tmp_path: Path) -> None:
    """One lock per file while it is held or awaited; none kept for files no one touches."""
    files = DataFiles(tmp_path)
    held = files.lock("notes/shared.md")
    await held.acquire()
    assert files.lock("notes/shared.md") is held  # a second writer waits on the same lock
    held.release()

    gone = []
    for i in range(200):
        lock = files.lock(f"notes/{i}.md")
        gone.append(weakref.ref(lock))
        async with lock:  # held, then let go, as a memory tool's change does
            assert files.lock(f"notes/{i}.md") is lock
        del lock
    assert [r for r in gone if r() is not None] == []


@pytest.mark.parametrize("keep_days", [0, 36_501])
def test_keep_days_must_be_a_sensible_number(keep_days: int) -> None:
    with pytest.raises(ConfigError, match=r"storage\.keep_days"):
        parse_config({"storage": {"keep_days": keep_days}}, env={})
