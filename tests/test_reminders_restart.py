"""Reminders across stops, crashes and restarts: what came due while nothing ran is delivered
once, marked late with its original time; a firing caught in the crash window is sent once.

The in-process tests stop one App and start another on the same data folder; the last ones
run the real daemon process (tests/daemon.py), stopped with SIGTERM or killed with SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from contextlib import closing
from datetime import datetime
from pathlib import Path

from conftest import AppFactory, connect, daemon_config, eventually
from daemon import Daemon
from fake_llm import FakeLLM, Reply
from reminder_helpers import (
    FAST,
    KATHMANDU,
    TZ,
    inbox_reminders,
    mirrored,
    next_reminder,
    reminders_so_far,
    set_by_model,
    tool_results,
)
from sync_db import SyncDb

from ganglion.messages import Inbound, Source, ThreadId
from ganglion.storage.db import Database
from ganglion.storage.reminders import NewReminder, ReminderStore


async def test_a_firing_resubmitted_after_a_crash_is_not_delivered_twice(
    app_factory: AppFactory, fake_llm: FakeLLM, database_url: str
) -> None:
    """The crash window: submitted to the bus, the row not yet advanced."""
    app = await app_factory(FAST)
    chat = await connect(app)
    await set_by_model(chat, fake_llm, text="Once only", in_minutes=0.02)
    before = await app.reminder_store.get(1)
    assert before is not None
    await next_reminder(chat)
    async with app.db.transaction() as conn:  # as if the advance had been lost
        await conn.execute("UPDATE reminders SET status = 'active', next_at = ?, fired = 0"
                           " WHERE id = 1", (before.next_at,))
    await app.reminders.wake()  # the repeated firing had its chance here
    await app.bus.wait_idle()
    assert reminders_so_far(await chat.events_so_far()) == []
    assert len(await inbox_reminders(app)) == 1
    after = await app.reminder_store.get(1)
    assert after is not None and after.status == "done"
    await chat.close()


async def test_a_recurring_firing_caught_in_the_crash_window_leaves_no_time_uncounted(
    app_factory: AppFactory, fake_llm: FakeLLM, database_url: str
) -> None:
    """The crash window of an hourly reminder, the start 3.5 hours later: the firing stored
    before the crash is sent as it was (it counted one time); the three times since are
    counted by the next firing, at once, not moved past unsaid."""
    app = await app_factory(FAST)
    chat = await connect(app)
    due = time.time() - 3.5 * 3600
    async with app.db.transaction() as conn:
        cur = await conn.execute(
            "INSERT INTO reminders (thread_id, text, next_at, every_seconds, created_by,"
            " created_at) VALUES (?, 'Drink water', ?, 3600, 'test', ?)",
            (chat.thread_id, due, due - 60))
        rid = cur.lastrowid
    stored = Inbound(ThreadId(chat.thread_id), "⏰ Reminder: Drink water", "reminder",
                     Source.REMINDER, f"reminder:{rid}:{round(due * 1000)}",
                     meta={"reminder_id": str(rid), "due": str(due), "late": "0",
                           "missed": "1", "exact": "1"})
    async with app.db.transaction() as conn:  # stored, then the crash: the row not moved on
        await conn.execute(
            "INSERT INTO inbox (thread_id, client_id, source, sender, text, meta, created_at,"
            " status) VALUES (?, ?, 'reminder', 'reminder', ?, ?, ?, 'done')",
            (stored.thread_id, stored.client_id, stored.text, json.dumps(stored.meta), due))
    await app.reminders.wake()
    _, late = await next_reminder(chat)
    assert late["text"].startswith("⏰ Reminder (late, was due "), late["text"]
    assert late["text"].endswith(", and 2 more times since): Drink water"), late["text"]
    assert await inbox_reminders(app) == [
        f"reminder:{rid}:{round(due * 1000)}", f"reminder:{rid}:{round((due + 3600) * 1000)}"]
    after = await app.reminder_store.get(rid)
    assert after is not None and after.next_at == due + 4 * 3600
    await chat.close()


async def test_a_recurring_reminder_missed_while_stopped_fires_once_for_all_it_missed(
    app_factory: AppFactory, fake_llm: FakeLLM, database_url: str
) -> None:
    app = await app_factory(FAST)
    chat = await connect(app)
    await set_by_model(chat, fake_llm, text="Check the oven", every_minutes=0.02)
    _, on_time = await next_reminder(chat)
    assert on_time["text"] == "⏰ Reminder: Check the oven"
    await chat.close()
    await app.stop()
    await asyncio.sleep(4.0)  # about three periods of 1.2 s pass with nobody running

    app = await app_factory(FAST)  # the same data folder
    chat = await connect(app, chat.thread_id)
    # By message id: the transcript and the outbox may both bring the same message.
    seen = {m["id"]: m["text"] for m in chat.ready["transcript"] if m["text"].startswith("⏰")}
    while not any("late" in t for t in seen.values()) or (
            list(seen.values())[-1] != "⏰ Reminder: Check the oven"):  # on time again
        _, event = await next_reminder(chat)
        seen[event["id"]] = event["text"]
    texts = list(seen.values())
    late = next(i for i, t in enumerate(texts) if "late" in t)
    on_time = "⏰ Reminder: Check the oven"
    assert texts[late].startswith("⏰ Reminder (late, was due ")
    assert texts[late].endswith("more times since): Check the oven")
    # One message for all it missed: on time before the stop, once late, on time after.
    assert late >= 1 and texts == [on_time] * late + [texts[late]] + [on_time] * (
        len(texts) - late - 1), texts
    await chat.close()


async def test_a_cron_missed_while_stopped_fires_once_late_with_its_count_then_continues(
    app_factory: AppFactory, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    tid = ThreadId("web_" + "d" * 32)
    data = tmp_path / "data"
    now = time.time()
    minute = now - now % 60
    db = await Database.open(data / "conversation.db")  # written while no daemon runs
    store = ReminderStore(db, data / "reminders.json", KATHMANDU)
    await store.add_many([
        NewReminder(tid, "Stand up", minute - 180, cron="* * * * *"),  # 4 times, or 5
        NewReminder(tid, "Breathe", minute - 3600, cron="* * * * *"),  # 61 times: not counted
    ])
    await db.close()

    app = await app_factory(FAST)
    fired_by = time.time()
    await app.bus.wait_idle()
    chat = await connect(app, tid)
    texts = [m["text"] for m in chat.ready["transcript"] if m["text"].startswith("⏰")]
    since = {f"and {3 + k} more times since" for k in range(int(fired_by // 60 - now // 60) + 1)}
    assert len(texts) == 2, texts
    breathe, stand_up = texts
    was_due = datetime.fromtimestamp(minute - 3600, KATHMANDU).strftime("%a %Y-%m-%d %H:%M")
    assert breathe == f"⏰ Reminder (late, was due {was_due} +0545, and 20 or more times since)" \
                      ": Breathe"
    was_due = datetime.fromtimestamp(minute - 180, KATHMANDU).strftime("%a %Y-%m-%d %H:%M")
    head, _, rest = stand_up.partition(" +0545, ")
    assert head == f"⏰ Reminder (late, was due {was_due}"
    assert rest.removesuffix("): Stand up") in since, stand_up
    # Each goes on at its next regular time: the next whole minute after it fired.
    for r in await app.reminder_store.active():
        assert r.fired == 1 and r.next_at is not None and r.last_fired_at is not None
        assert r.next_at % 60 == 0 and 0 < r.next_at - r.last_fired_at <= 60
    job = app.scheduler.get_job("reminders")
    assert job is not None and job.next_run_time.timestamp() > fired_by
    await chat.close()


# --- the real daemon: a reminder due while it is stopped ----------------------------------


def firings(data: Path) -> list[str]:
    """The client ids of every reminder firing the inbox holds."""
    with closing(sqlite3.connect(data / "conversation.db")) as conn:
        return [r[0] for r in conn.execute(
            "SELECT client_id FROM inbox WHERE source = 'reminder'")]


def reminder_rows(data: Path) -> list[str]:
    with sqlite3.connect(data / "conversation.db") as conn:
        return [r[0] for r in conn.execute(
            "SELECT content FROM messages WHERE role = 'assistant'"
            " AND content LIKE '⏰ Reminder%'")]


async def test_a_reminder_due_while_the_daemon_is_stopped_arrives_once_after_restart_marked_late(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    async with Daemon(tmp_path, daemon_config(fake_llm, scheduler={"timezone": TZ})) as d:
        chat = await d.connect()
        await set_by_model(chat, fake_llm, text="Take the bread out", in_minutes=0.04)
        with sqlite3.connect(tmp_path / "data" / "conversation.db") as conn:
            (due_at,) = conn.execute("SELECT next_at FROM reminders WHERE id = 1").fetchone()
        due = datetime.fromtimestamp(due_at, KATHMANDU)
        await chat.close()
        assert await d.stop() == 0
        await asyncio.sleep(max(0.0, due_at - time.time()) + 1.0)  # its time passes
        assert reminder_rows(tmp_path / "data") == []

        d.start()
        await d.wait_ready()
        # What was due is fired during the start, before "ready in": then it had its chance.
        await eventually(lambda: d.text().count("ready in") == 2, 10)
        assert len(firings(tmp_path / "data")) == 1
        chat = await d.connect(chat.thread_id)
        seen = {m["id"]: m["text"] for m in chat.ready["transcript"]
                if m["text"].startswith("⏰")}
        while not seen:  # else from the outbox, once its turn has answered it
            _, event = await next_reminder(chat)
            seen[event["id"]] = event["text"]
        await eventually(lambda: bool(reminder_rows(tmp_path / "data")), 10)
        texts = list(seen.values())
        assert reminder_rows(tmp_path / "data") == texts, texts  # once
        # Seconds are shown only when the due time has some (local_text).
        clock = "%H:%M:%S" if due.second else "%H:%M"
        assert texts[0].startswith(f"⏰ Reminder (late, was due {due:%a %Y-%m-%d} {due:{clock}}")
        assert texts[0].endswith("+0545): Take the bread out")
        await chat.close()
        assert await d.stop() == 0

        d.start()  # and a further restart does not send it again
        await d.wait_ready()
        await eventually(lambda: d.text().count("ready in") == 3, 10)  # its chance, as above
        assert len(firings(tmp_path / "data")) == 1
        assert reminder_rows(tmp_path / "data") == texts
        await mirrored(tmp_path / "data", [])


async def test_a_firing_recovered_after_a_crash_and_now_late_is_marked_late(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    """Killed between the inbox write and the delivery: the firing's text, written on time,
    is rebuilt at recovery to say it is late, with its original time."""
    data = tmp_path / "data"
    async with Daemon(tmp_path, daemon_config(fake_llm, scheduler={"timezone": TZ})) as d:
        chat = await d.connect()
        await set_by_model(chat, fake_llm, text="Take the bread out", in_minutes=0.02)
        # A slow answer holds the conversation's lane: the firing is stored, not delivered.
        fake_llm.script(Reply(hang=True))
        assert (await chat.send("a slow question"))["type"] == "ack"

        def stored_firing() -> tuple[str, str, str] | None:
            with closing(sqlite3.connect(data / "conversation.db")) as conn:
                row = conn.execute("SELECT text, status, meta FROM inbox"
                                   " WHERE source = 'reminder'").fetchone()
            return None if row is None else (row[0], row[1], row[2])

        await eventually(lambda: stored_firing() is not None, 10)
        row = stored_firing()
        assert row is not None and row[:2] == ("⏰ Reminder: Take the bread out", "pending")
        d.kill()  # SIGKILL: no cleanup
        await chat.close()
        assert reminder_rows(data) == []

        # Down for two minutes: as if the firing had been due two minutes earlier (the test
        # does not wait them out).
        meta = json.loads(row[2])
        due = float(meta["due"]) - 120
        with sqlite3.connect(data / "conversation.db") as conn:
            conn.execute("UPDATE inbox SET meta = ? WHERE source = 'reminder'",
                         (json.dumps({**meta, "due": str(due)}),))
        d.start()
        await d.wait_ready()
        chat = await d.connect(chat.thread_id)
        await eventually(lambda: bool(reminder_rows(data)), 10)
        when = datetime.fromtimestamp(due, KATHMANDU)
        clock = "%H:%M:%S" if when.second else "%H:%M"
        assert reminder_rows(data) == [
            f"⏰ Reminder (late, was due {when:%a %Y-%m-%d} {when:{clock}} +0545): "
            "Take the bread out"]
        await chat.close()


async def test_a_batch_of_firings_with_one_stored_before_delivers_only_the_new_ones(
    app_factory: AppFactory, fake_llm: FakeLLM, database_url: str
) -> None:
    """One inbox write for a batch (``INSERT ... RETURNING``), a firing already stored in it
    (the crash window) taken from the stored row: each new firing runs once, under its own
    inbox id, and the stored one is not run again."""
    app = await app_factory(FAST)
    tid = ThreadId("web_" + "f" * 32)
    await asyncio.sleep(0.05)  # due after the start: on time, not late
    due = time.time()
    ids = await app.reminder_store.add_many(
        [NewReminder(tid, name, due) for name in ("one", "two", "three")])
    # "two" was submitted (and answered) before a crash lost the row's advance.
    await app.bus.submit(Inbound(tid, "⏰ Reminder: two", sender="reminder",
                                 source=Source.REMINDER,
                                 client_id=f"reminder:{ids[1]}:{round(due * 1000)}"))
    await app.bus.wait_idle()

    await app.reminders.wake()
    await app.bus.wait_idle()
    rows = await app.db.fetchall(
        "SELECT i.client_id, i.status, m.content FROM messages m JOIN inbox i"
        " ON m.inbox_id = i.id WHERE m.thread_id = ? ORDER BY m.id", (tid,))
    assert [tuple(r) for r in rows] == [
        (f"reminder:{ids[1]}:{round(due * 1000)}", "done", "⏰ Reminder: two"),
        (f"reminder:{ids[0]}:{round(due * 1000)}", "done", "⏰ Reminder: one"),
        (f"reminder:{ids[2]}:{round(due * 1000)}", "done", "⏰ Reminder: three"),
    ]
    inbox = await app.db.fetchall("SELECT status FROM inbox WHERE source = 'reminder'")
    assert [r["status"] for r in inbox] == ["done"] * 3
    assert [(r.status, r.fired) for r in
            [await app.reminder_store.get(i) for i in ids] if r is not None] == [("done", 1)] * 3
    assert [m.content for _, m in await app.outbox.pending(tid)] == [
        "⏰ Reminder: two", "⏰ Reminder: one", "⏰ Reminder: three"]  # no tab: kept for it


async def test_a_turn_killed_after_its_tool_ran_resumes_without_running_it_again(
    tmp_path: Path, fake_llm: FakeLLM, database_url: str
) -> None:
    """The model set a reminder, then the daemon died before the turn's answer was stored.
    The re-run turn resumes after the call: one reminder, and the model sees its result."""
    db = SyncDb(database_url, tmp_path / "data")
    async with Daemon(tmp_path, daemon_config(fake_llm, database={"url": database_url})) as d:
        chat = await d.connect()
        fake_llm.script(Reply(tool_calls=[("set_reminder", {"text": "Stretch",
                                                             "in_minutes": 30})]),
                        Reply(hang=True))  # the answer after the call never comes
        assert (await chat.send("remind me to stretch in half an hour"))["type"] == "ack"
        async with asyncio.timeout(10):
            await fake_llm.wait_until(lambda: len(fake_llm.requests) == 2)
        d.kill()  # SIGKILL while the model writes its answer
        await chat.close()

        fake_llm.script(Reply(text="Done: I will remind you."))
        d.start()
        await d.wait_ready()
        chat = await d.connect(chat.thread_id)
        async with asyncio.timeout(10):
            await fake_llm.wait_until(lambda: len(fake_llm.requests) == 3)
        resumed = fake_llm.requests[2]
        assert [m["role"] for m in resumed["messages"]][-3:] == ["user", "assistant", "tool"]
        assert "Reminder #1 set" in tool_results(resumed)[-1]  # the call made before, its result
        answers = [m["text"] for m in chat.ready["transcript"] if m["role"] == "assistant"]
        while "Done: I will remind you." not in answers:
            answers.append((await chat.reply(10))["text"])
        await chat.close()
    reminders = db.rows("SELECT text FROM reminders")
    [(steps,)] = db.rows("SELECT count(*) FROM turn_steps")
    assert reminders == [("Stretch",)]
    assert steps == 0  # the finished turn's steps are gone


def steps_kept(db: SyncDb) -> int:
    [(steps,)] = db.rows("SELECT count(*) FROM turn_steps")
    return int(steps)


async def test_a_turn_killed_twice_mid_tool_resumes_with_its_exchange_whole_and_in_order(
    tmp_path: Path, fake_llm: FakeLLM, database_url: str
) -> None:
    """First killed during a shell call (its result never came), then killed again after a
    second call: the third run sees every call followed by its own result."""
    config = daemon_config(fake_llm, tools={"policy": {"shell": "on"}},
                           database={"url": database_url})
    async with Daemon(tmp_path, config) as d:
        chat = await d.connect()
        fake_llm.script(Reply(tool_calls=[("shell", {"command": "sleep 30"})]))
        assert (await chat.send("nap, then note it"))["type"] == "ack"
        data = SyncDb(database_url, tmp_path / "data")
        # The call is kept before its shell starts; killed now, whether the shell has started
        # or not, the call gets the same cut-off result.
        await eventually(lambda: steps_kept(data) > 0, 10)
        d.kill()
        await chat.close()

        fake_llm.script(Reply(tool_calls=[("memory_append", {"file": "MEMORIES.txt",
                                                             "text": "napped"})]),
                        Reply(hang=True))
        d.start()
        await d.wait_ready()
        async with asyncio.timeout(10):
            await fake_llm.wait_until(lambda: len(fake_llm.requests) == 3)
        d.kill()  # while the model answers after the second call

        fake_llm.script(Reply(text="Napped and noted."))
        d.start()
        await d.wait_ready()
        chat = await d.connect(chat.thread_id)
        async with asyncio.timeout(10):
            await fake_llm.wait_until(lambda: len(fake_llm.requests) == 4)
        exchange = [m for m in fake_llm.requests[3]["messages"]
                    if m["role"] in ("assistant", "tool")]
        # (role, tool name or the call it answers) in the order the model is given them
        order = [(m["role"], m["tool_calls"][0]["function"]["name"] if m.get("tool_calls")
                  else m.get("tool_call_id")) for m in exchange]
        ids = {m["tool_calls"][0]["function"]["name"]: m["tool_calls"][0]["id"]
               for m in exchange if m.get("tool_calls")}
        assert order == [("assistant", "shell"), ("tool", ids["shell"]),
                         ("assistant", "memory_append"), ("tool", ids["memory_append"])], order
        assert exchange[1]["content"].startswith("error: this call was cut off")
        answers = [m["text"] for m in chat.ready["transcript"] if m["role"] == "assistant"]
        while "Napped and noted." not in answers:
            answers.append((await chat.reply(10))["text"])
        await chat.close()
    assert (tmp_path / "data" / "MEMORIES.txt").read_text().count("napped") == 1
