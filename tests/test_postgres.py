"""PostgreSQL as the database: start-up names an unreachable server or a refused login
plainly, one daemon per database, a server restart during a turn loses nothing, and the
storage verbs keep their promises (exactly once) on both backends."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from conftest import AppFactory, OpenDb, connect, daemon_config, eventually_async
from daemon import Daemon, free_port
from fake_llm import FakeLLM, Reply
from pg_cluster import PASSWORD, USER, Cluster

from ganglion.config import ConfigError, parse_config
from ganglion.messages import Inbound, Source, ThreadId
from ganglion.storage.backend import Backend
from ganglion.storage.conversations import Conversations
from ganglion.storage.history import History, NewMessage
from ganglion.storage.inbox import Inbox
from ganglion.storage.migrations import MIGRATIONS, Migration
from ganglion.storage.reminders import HeartbeatLedger
from ganglion.storage.search import Search
from ganglion.storage.usage import Payer, UsageLog

TID = ThreadId("web_" + "ab" * 16)


async def refused_start(tmp_path: Path, fake_llm: FakeLLM, url: str) -> str:
    """The daemon started on ``url``: it exits 1 with no traceback; its output."""
    d = Daemon(tmp_path, daemon_config(fake_llm, database={"url": url}))
    d.start()
    try:
        assert await d.wait_exit(30) == 1, d.text()
    finally:
        d.kill()
    out = d.text()
    assert "Traceback" not in out, out
    return out


async def test_a_refused_login_is_named_plainly_and_the_password_never_shown(
    tmp_path: Path, fake_llm: FakeLLM, pg_cluster: Cluster
) -> None:
    wrong = "not-the-Pass-91d2"
    url = pg_cluster.new_database().replace(PASSWORD, wrong)
    out = await refused_start(tmp_path, fake_llm, url)
    assert "refused the login: check the user and password in database.url" in out
    assert f"postgresql://{USER}:***@127.0.0.1:{pg_cluster.port}/" in out
    assert wrong not in out


async def test_an_unreachable_server_is_named_plainly(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    url = f"postgresql://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/nothing"  # nobody listens
    out = await refused_start(tmp_path, fake_llm, url)
    assert "cannot reach PostgreSQL at postgresql://ganglion:***@127.0.0.1:" in out
    assert "is the server running" in out


async def test_a_second_daemon_on_the_same_database_refuses_to_start(
    tmp_path: Path, fake_llm: FakeLLM, pg_cluster: Cluster
) -> None:
    """Two data folders, one database: the folder's lock cannot see it, the database's
    advisory lock does. Once the first stops, the database is free again."""
    url = pg_cluster.new_database()
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first = Daemon(tmp_path / "one", daemon_config(fake_llm, database={"url": url}))
    async with first:
        out = await refused_start(tmp_path / "two", fake_llm, url)
        assert "another Ganglion is running on the database" in out
        assert "stop it, or give this one another database.url" in out
        assert PASSWORD not in out
        assert await first.stop() == 0
    second = Daemon(tmp_path / "two", daemon_config(fake_llm, database={"url": url}))
    async with second:  # the lock went with the first daemon
        assert await second.stop() == 0, second.text()


async def test_a_server_restart_during_a_turn_loses_nothing(
    app_factory: AppFactory, fake_llm: FakeLLM, pg_cluster: Cluster,
    request: pytest.FixtureRequest,
) -> None:
    """The server restarts while the model answers: every pooled connection is gone. The
    turn's end is stored on a new connection, once; the next turn runs as usual, and the
    database's lock (one daemon per database) is held again."""
    app = await app_factory({"database": {"url": pg_cluster.new_database()}})
    chat = await connect(app)
    held = asyncio.Event()
    fake_llm.script(Reply(text="Answered after the restart.", held=held),
                    Reply(text="And the next one."))
    assert (await chat.send("a question"))["type"] == "ack"
    async with asyncio.timeout(10):
        await fake_llm.wait_until(lambda: fake_llm.in_flight > 0)
    await asyncio.to_thread(pg_cluster.restart)
    held.set()
    assert (await chat.reply(15))["text"] == "Answered after the restart."
    assert (await chat.ask("another question"))["text"] == "And the next one."
    rows = await app.db.fetchall("SELECT status FROM inbox ORDER BY id")
    assert [r["status"] for r in rows] == ["done", "done"]
    answers = await app.db.fetchall(
        "SELECT content FROM messages WHERE role = 'assistant' ORDER BY id")
    assert [r["content"] for r in answers] == ["Answered after the restart.",
                                               "And the next one."]
    # The restart dropped the lock's connection too: the daemon holds the lock again.
    await eventually_async(lambda: locks_held(app.db), 10)
    await chat.close()


async def locks_held(db: Backend) -> bool:
    row = await db.fetchone("SELECT count(*) AS n FROM pg_locks WHERE locktype = 'advisory'"
                            " AND granted")
    return bool(row["n"] == 1)


def test_the_database_url_shape_is_checked_and_the_environment_fills_it() -> None:
    for bad in ("mysql://x@h/db", "sqlite://relative.db", "postgresql://u:p@host:port/db",
                "postgresql://u:p@host:5432/"):
        with pytest.raises(ConfigError, match=r"database\.url") as err:
            parse_config({"database": {"url": bad}}, env={})
        assert ":p@" not in str(err.value)
    url = "postgresql://me:s3cret-Pw@db.example.org:5432/ganglion"
    assert parse_config({}, env={"DATABASE_URL": url}).database.url == url
    assert parse_config({"database": {"url": "sqlite:///x.db"}},
                        env={"DATABASE_URL": url}).database.url == "sqlite:///x.db"
    assert parse_config({}, env={}).database.url == "sqlite:///conversation.db"


# -- the storage verbs, the same on both backends ----------------------------------------


def web(client_id: str, text: str = "hello") -> Inbound:
    return Inbound(TID, text, sender="web", source=Source.WEB, client_id=client_id)


async def test_a_message_is_stored_once_and_answered_once(open_db: OpenDb) -> None:
    db = await open_db()
    try:
        inbox, history = Inbox(db), History(db)
        msg, new = await inbox.add(web("c1"))
        again, new_again = await inbox.add(web("c1"))
        assert new and not new_again and again.id == msg.id > 0
        many = await inbox.add_many([web("c1"), web("c2"), web("c2")])
        assert [(m.client_id, is_new) for m, is_new in many] == [
            ("c1", False), ("c2", True), ("c2", False)]
        assert await inbox.known(TID, ["c1", "c2", "c3"]) == {"c1", "c2"}
        await history.begin_turn(msg, "hello")
        await history.begin_turn(msg, "hello")  # a re-run turn: the question once
        await history.add_step(msg.id, 0, NewMessage("assistant", "step"))
        await history.add_step(msg.id, 0, NewMessage("assistant", "step, again"))
        assert [s.content for s in await history.steps(msg.id)] == ["step, again"]
        # Two ends of one turn at once (a Stop racing the answer): one is stored.
        ends = await asyncio.gather(*[
            history.finish_turn(TID, msg.id, [NewMessage("assistant", f"answer {i}",
                                                         deliver=True)]) for i in range(2)])
        assert sorted(len(e) for e in ends) == [0, 1]
        assert [m.role for m in await history.context(TID)] == ["user", "assistant"]
        assert [p.client_id for p in await inbox.pending()] == ["c2"]
        assert await inbox.cancel([many[1][0].id, msg.id]) == [(many[1][0].id, "c2")]
        assert await inbox.pending() == []
        assert [m.content for m in await history.transcript(TID)] == [
            "hello", answers := next(e for e in ends if e)[0][1].content, "hello"]
        assert answers.startswith("answer ")
    finally:
        await db.close()


async def test_a_failed_transaction_leaves_nothing_and_limits_count_right(
    open_db: OpenDb,
) -> None:
    db = await open_db()
    try:
        with pytest.raises(RuntimeError):
            async with db.transaction() as conn:
                await conn.execute("INSERT INTO thread_settings VALUES (?, 'k', 'v')", (TID,))
                raise RuntimeError("the body failed")
        assert await db.fetchall("SELECT * FROM thread_settings") == []
        usage = UsageLog(db)
        payer = Payer("alice", "alice", TID, "web")
        admitted = [await usage.admit(payer, window_start=0, max_in_window=2, day_start=0,
                                      max_tokens_today=None) for _ in range(3)]
        assert [a.admitted for a in admitted] == [True, True, False]
        await usage.record_call(payer, model="m", endpoint="e", prompt_tokens=10,
                                completion_tokens=5)
        stats = await usage.stats("alice", TID)
        assert (stats.this_account.messages, stats.this_account.tokens) == (2, 15)
        ledger = HeartbeatLedger(db)
        assert [await ledger.add("2026-01-01", 5) for _ in range(2)] == [5, 10]
        assert [await ledger.mark_budget_noticed("2026-01-01") for _ in range(2)] == [
            True, False]
    finally:
        await db.close()


async def test_a_cancel_is_never_swallowed_wherever_it_lands(open_db: OpenDb) -> None:
    """A task cancelled while it reads or writes ends cancelled, at any point of the
    statement (the pool's release included): a swallowed cancel left a daemon's retention
    task asleep for a day instead of stopping."""
    db = await open_db()
    try:
        for turns in range(40):
            for work in (lambda: db.fetchall("SELECT * FROM inbox"),
                         lambda: db.write("INSERT INTO thread_settings VALUES (?, 'k', 'v')"
                                          " ON CONFLICT DO NOTHING", (TID,))):
                task = asyncio.ensure_future(work())
                for _ in range(turns):
                    await asyncio.sleep(0)
                if task.cancel():
                    with pytest.raises(asyncio.CancelledError):
                        await task
                else:
                    await task
    finally:
        await db.close()


async def test_a_plain_migration_runs_on_both_and_once(open_db: OpenDb) -> None:
    """What another branch adds as migration 11+ (a CREATE TABLE with SQLite's types, an
    ALTER TABLE) needs no PostgreSQL text of its own; a second open applies nothing."""
    extra = Migration(99, "plain", """
        CREATE TABLE notes (
            id INTEGER PRIMARY KEY,
            thread_id TEXT NOT NULL,
            at REAL NOT NULL,
            body BLOB
        );
        ALTER TABLE conversations ADD COLUMN pinned INTEGER NOT NULL DEFAULT 0;
        CREATE INDEX notes_thread ON notes (thread_id)
        """)
    for _ in range(2):
        db = await open_db(migrations=[*MIGRATIONS, extra])
        try:
            cur = await db.write("INSERT INTO notes (thread_id, at, body) VALUES (?, ?, ?)",
                                 (TID, 1234567890.123456, b"\x00\x01"))
            assert cur.rowcount == 1 and cur.lastrowid is not None
            row = await db.fetchone("SELECT at, body FROM notes WHERE id = ?", (cur.lastrowid,))
            assert (row["at"], bytes(row["body"])) == (1234567890.123456, b"\x00\x01")
            assert await db.fetchall("SELECT pinned FROM conversations") == []
            applied = await db.fetchall("SELECT number FROM migrations ORDER BY number")
            assert [r["number"] for r in applied][-1] == 99
        finally:
            await db.close()


async def test_a_message_sent_while_the_server_is_down_is_refused_then_stored_once(
    app_factory: AppFactory, fake_llm: FakeLLM, pg_cluster: Cluster,
) -> None:
    """The server down: the tab is told its message was not stored (and why, in the words
    of this database, not the data folder's); once the server is back, the page's resend
    of the same id is stored and answered once."""
    app = await app_factory({"database": {"url": pg_cluster.new_database()}})
    chat = await connect(app)
    fake_llm.script(Reply(text="Stored now."))
    await asyncio.to_thread(pg_cluster.stop)
    try:
        refused = await chat.send("while it is down", client_id="m1")
        assert refused["type"] == "error" and refused["code"] == "not_stored", refused
        assert "The database server refused it or cannot be reached" in refused["message"]
        assert PASSWORD not in refused["message"]
    finally:
        await asyncio.to_thread(pg_cluster.start)
    assert (await chat.send("while it is down", client_id="m1"))["type"] == "ack"
    assert (await chat.reply(15))["text"] == "Stored now."
    rows = await app.db.fetchall("SELECT client_id, status FROM inbox")
    assert [tuple(r) for r in rows] == [("m1", "done")]
    await chat.close()


async def test_an_older_database_is_upgraded_with_its_rows_on_both(open_db: OpenDb) -> None:
    """A database from before the conversation list and search (migrations 8 and 10 run
    on rows already there): the web thread is listed, titled by its first message, and its
    history is found."""
    old = await open_db(migrations=[m for m in MIGRATIONS if m.number < 8])
    try:
        msg, _ = await Inbox(old).add(web("c1", "Where did I put the parsnips?"))
        await History(old).begin_turn(msg, msg.text)
    finally:
        await old.close()
    db = await open_db()
    try:
        [listed] = await Conversations(db).listed()
        assert (listed.thread_id, listed.title) == (TID, "Where did I put the parsnips?")
        assert [h.thread_id for h in await Search(db).search("parsnips")] == [TID]
    finally:
        await db.close()
