"""Reminders end to end: set by the model's tools, fired on the bus at the local time, exactly once.

Real short times (seconds), the fake LLM, real SQLite, the web socket; stops, crashes and
restarts are in test_reminders_restart.py. Timing goals (how soon after its time) are in
bench/, not here: these tests check "never early, delivered once, in the right zone, to the
right thread, never beside a turn of that thread".
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta

from conftest import AppFactory, connect, eventually_async
from fake_llm import FakeLLM, Reply, system_of
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

from ganglion.messages import Inbound, Outbound, OutKind, Source, ThreadId
from ganglion.storage.reminders import NewReminder
from ganglion.triggers.reminders import cron_next


async def test_one_shot_reminder_fires_once_at_its_time_without_a_model_call(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(FAST)
    chat = await connect(app)
    result = await set_by_model(chat, fake_llm, text="Stretch your legs", in_minutes=0.03)
    assert "Reminder #1 set for" in result and "+0545" in result
    assert "delivered in this conversation" in result
    reminder = await app.reminder_store.get(1)
    assert reminder is not None and reminder.next_at is not None
    calls = len(fake_llm.requests)

    arrived, event = await next_reminder(chat)
    assert event["text"] == "⏰ Reminder: Stretch your legs" and event["role"] == "assistant"
    assert arrived >= reminder.next_at - 0.05  # never early
    await app.bus.wait_idle()  # the firing's turn has ended: what it sent was sent
    assert reminders_so_far(await chat.events_so_far()) == []  # and only once
    assert len(fake_llm.requests) == calls  # delivered as written: no model decides whether
    assert await inbox_reminders(app) == [f"reminder:1:{round(reminder.next_at * 1000)}"]
    done = await app.reminder_store.get(1)
    assert done is not None and done.status == "done" and done.fired == 1
    # In the conversation's history: the model knows the reminder was sent.
    await chat.ask("thanks, done")
    assistant = [m["content"] for m in fake_llm.requests[-1]["messages"]
                 if m["role"] == "assistant"]
    assert "⏰ Reminder: Stretch your legs" in assistant
    assert (await mirrored(app.data_dir, []))["timezone"] == TZ
    await chat.close()


async def test_recurring_reminder_fires_once_per_period_until_cancelled(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(FAST)
    chat = await connect(app)
    result = await set_by_model(chat, fake_llm, text="Drink water", every_minutes=0.02)
    assert "then every 1 s" in result  # 1.2 s, rounded for people
    await mirrored(app.data_dir, [(1, "every 1 s", "Drink water")])
    first = await app.reminder_store.get(1)
    assert first is not None and first.next_at is not None

    got = [await next_reminder(chat) for _ in range(3)]  # due at +1.2, +2.4, +3.6 s
    assert [e["text"] for _, e in got] == ["⏰ Reminder: Drink water"] * 3
    for i, (arrived, _) in enumerate(got):
        assert arrived >= first.next_at + i * 1.2 - 0.05  # each at (not before) its period
    ids = await inbox_reminders(app)
    fired = await app.reminder_store.get(1)
    assert fired is not None and len(ids) == len(set(ids)) == fired.fired  # each period once

    fake_llm.script(Reply(tool_calls=[("cancel_reminder", {"reminder_id": 1})]),
                    Reply(text="Stopped them."))
    await chat.send("stop the water reminders")
    while (await chat.reply())["text"] != "Stopped them.":
        pass
    assert "Reminder #1 cancelled" in tool_results(fake_llm.requests[-1])[-1]
    # A firing on its way at the cancel has been sent once its turn ends, and read; after
    # it nothing can come: no active reminder is left and no wake-up is armed.
    await app.bus.wait_idle()
    assert len(reminders_so_far(await chat.events_so_far())) <= 1
    assert await app.reminder_store.next_due_at() is None
    assert app.scheduler.get_job("reminders") is None
    await mirrored(app.data_dir, [])
    await chat.close()


async def test_local_times_are_read_in_the_configured_zone(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(FAST)
    chat = await connect(app)
    now = datetime.now(KATHMANDU).replace(microsecond=0)
    at = now + timedelta(seconds=5)
    result = await set_by_model(chat, fake_llm, text="Tea", at=at.strftime("%Y-%m-%dT%H:%M:%S"))
    system = system_of(fake_llm.requests[0])
    assert f"Current local time: {now:%A %Y-%m-%d}" in system and "UTC+0545" in system
    assert f"{at:%H:%M}" in result
    reminder = await app.reminder_store.get(1)
    assert reminder is not None and reminder.next_at == at.timestamp()  # 05:45 ahead of UTC

    arrived, event = await next_reminder(chat)
    assert event["text"] == "⏰ Reminder: Tea" and arrived >= at.timestamp() - 0.05

    # Cron fields are local too, and weekday numbers are crontab's (1 = Monday, 0 = Sunday).
    result = await set_by_model(chat, fake_llm, text="Weekly review", cron="30 9 * * 1")
    weekly = await app.reminder_store.get(2)
    assert weekly is not None and weekly.next_at is not None
    local = datetime.fromtimestamp(weekly.next_at, KATHMANDU)
    assert (local.strftime("%a %H:%M"), local.utcoffset()) == ("Mon 09:30",
                                                               timedelta(hours=5, minutes=45))
    assert timedelta(0) < local - datetime.now(KATHMANDU) <= timedelta(days=7)
    assert "Monday" in result and 'cron "30 9 * * 1"' in result
    listing = (await chat.ask("/reminders"))["text"]
    assert f"times in {TZ}" in listing
    assert f"{local:%a %Y-%m-%d} 09:30 +0545" in listing and "cron 30 9 * * 1" in listing
    await chat.close()


def test_crontab_weekdays_keep_their_crontab_meaning() -> None:
    saturday = datetime(2030, 1, 5, 12, 0, tzinfo=KATHMANDU).timestamp()

    def next_day(expr: str) -> str:
        t = cron_next(expr, saturday, KATHMANDU)
        assert t is not None
        return datetime.fromtimestamp(t, KATHMANDU).strftime("%a %d %H:%M")

    assert next_day("0 9 * * 1-5") == "Mon 07 09:00"
    assert next_day("0 9 * * 0") == "Sun 06 09:00"
    assert next_day("0 9 * * 7") == "Sun 06 09:00"
    assert next_day("0 9 * * 5-7") == "Sun 06 09:00"
    assert next_day("0 13 * * 6") == "Sat 05 13:00"
    assert next_day("0 9 * * mon,wed") == "Mon 07 09:00"
    assert next_day("15 8 1 * *") == "Fri 01 08:15"


async def test_a_thread_bound_reminder_reaches_only_its_own_thread(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(FAST)
    mine, other = await connect(app), await connect(app)
    await set_by_model(mine, fake_llm, text="Only for the first tab", in_minutes=0.02)
    _, event = await next_reminder(mine)
    assert event["text"] == "⏰ Reminder: Only for the first tab"
    await app.bus.wait_idle()  # the firing has been delivered: to ``mine``, seen above
    assert reminders_so_far(await other.events_so_far()) == []
    await other.close()
    other = await connect(app, other.thread_id)
    assert all(not m["text"].startswith("⏰") for m in other.ready["transcript"])
    await mine.close()
    await other.close()


async def test_a_reminder_due_during_a_slow_turn_waits_for_its_answer(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    """Reminders go through the bus like the user's messages: one due while a turn of its
    conversation runs waits in the thread's lane, and arrives after that turn's answer."""
    app = await app_factory(FAST)
    chat = await connect(app)
    await set_by_model(chat, fake_llm, text="Stretch", in_minutes=0.02)
    answering = asyncio.Event()
    fake_llm.script(Reply(text="a long answer in several words", held=answering))
    assert (await chat.send("a slow question"))["type"] == "ack"

    async def fired() -> bool:
        return bool(await inbox_reminders(app))

    await eventually_async(fired, 10)  # the reminder fires while the model is still thinking
    assert len(await inbox_reminders(app)) == 1
    assert fake_llm.in_flight == 1
    answering.set()
    events = []
    while not (events and events[-1].get("text", "").startswith("⏰")):
        events.append(await chat.next_event(timeout=10))
    kinds = [e["type"] if e["type"] != "message" else e["text"] for e in events]
    answer = kinds.index("a long answer in several words")
    assert "delta" in kinds[:answer] and "delta" not in kinds[answer:], kinds
    assert kinds[-1] == "⏰ Reminder: Stretch" and kinds.count("⏰ Reminder: Stretch") == 1
    rows = await app.history.transcript(ThreadId(chat.thread_id))
    assert [r.content for r in rows][-3:] == [
        "a slow question", "a long answer in several words", "⏰ Reminder: Stretch"]
    await chat.close()


class FakeRoom:
    """Stands where the Matrix interface stands: owns one room id, records what it is sent."""

    name = "matrix"

    def __init__(self, room: str) -> None:
        self.room = room
        self.messages: asyncio.Queue[Outbound] = asyncio.Queue()

    def owns(self, thread_id: ThreadId) -> bool:
        return thread_id == self.room

    async def send(self, out: Outbound) -> bool:
        if out.kind is OutKind.MESSAGE:
            self.messages.put_nowait(out)
        return True

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def test_a_reminder_set_in_a_matrix_room_is_sent_to_that_room(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(FAST)
    room = FakeRoom("!quiet:example.org")
    app.router.register(room)
    fake_llm.script(Reply(tool_calls=[("set_reminder", {"text": "Stand-up", "in_minutes": 0.02})]),
                    Reply(text="Noted."))
    await app.bus.submit(Inbound(ThreadId(room.room), "remind me of the stand-up",
                                 sender="@you:example.org", source=Source.MATRIX,
                                 client_id="$event1"))
    assert (await asyncio.wait_for(room.messages.get(), 10)).text == "Noted."
    # Nothing happens in the room meanwhile; the reminder is sent all the same.
    reminder = await asyncio.wait_for(room.messages.get(), 10)
    assert reminder.text == "⏰ Reminder: Stand-up" and reminder.thread_id == room.room


async def test_a_system_reminder_runs_a_turn_and_sends_nothing(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(FAST)
    chat = await connect(app)
    result = await set_by_model(chat, fake_llm, text="Check the backup log", in_minutes=0.02,
                                system=True)
    assert "autonomous task" in result
    calls = len(fake_llm.requests)
    fake_llm.script(Reply(text="The backup ran fine."))
    async with asyncio.timeout(10):
        await fake_llm.wait_until(lambda: len(fake_llm.requests) > calls)
    body = fake_llm.requests[calls]
    assert body["messages"][-1]["content"].startswith("System reminder #1 (due ")
    assert "Check the backup log" in body["messages"][-1]["content"]
    assert "autonomous background task" in system_of(body)
    await app.bus.wait_idle()
    assert [e for e in await chat.events_so_far() if e["type"] == "message"] == []  # nothing
    events_in_tab = [m["text"] for m in (await connect(app, chat.thread_id)).ready["transcript"]]
    assert "The backup ran fine." not in events_in_tab
    kept = await app.history.context(ThreadId("system:reminder-1"))
    assert [m.content for m in kept if m.role == "assistant"] == ["The backup ran fine."]
    assert await app.outbox.threads_with_pending() == []
    # Nothing kept per thread once the turn is over (no person's turn would clear it later).
    assert app.worker.progress.quiet == set()
    await chat.close()


async def test_a_closed_tab_gets_its_reminder_when_it_comes_back(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(FAST)
    chat = await connect(app)
    await set_by_model(chat, fake_llm, text="Water the plants", in_minutes=0.02)
    await chat.close()
    tid = ThreadId(chat.thread_id)

    async def answered() -> bool:  # fired and answered while no tab was open
        row = await app.db.fetchone(
            "SELECT status FROM inbox WHERE source = 'reminder' AND thread_id = ?", (tid,))
        return row is not None and row["status"] == "done"

    await eventually_async(answered, 20)
    assert [m.content for _, m in await app.outbox.pending(tid)] == [
        "⏰ Reminder: Water the plants"]
    chat = await connect(app, tid)
    assert chat.ready["transcript"][-1]["text"] == "⏰ Reminder: Water the plants"
    _, event = await next_reminder(chat)  # from the outbox (the page dedupes by id)
    assert event["id"] == chat.ready["transcript"][-1]["id"]

    async def delivered() -> bool:
        return await app.outbox.pending(tid) == []

    await eventually_async(delivered)
    await chat.close()


async def test_a_cron_reminder_fires_at_its_time_and_moves_on_to_its_next_one(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(FAST)
    chat = await connect(app)
    due = time.time() + 1.5
    if 60 - due % 60 < 4:  # keep the next minute well after it, so "only once" is clear
        due += 5
    r = await app.reminders.add(NewReminder(ThreadId(chat.thread_id), "Minute cron", due,
                                            cron="* * * * *"))
    arrived, event = await next_reminder(chat)
    assert event["text"] == "⏰ Reminder: Minute cron" and arrived >= due - 0.05
    after = await app.reminder_store.get(r.id)
    assert after is not None and after.last_fired_at is not None and after.next_at is not None
    assert (after.status, after.fired) == ("active", 1)
    # On to the next whole minute (a cron time), and the wake-up is armed for it.
    assert after.next_at % 60 == 0 and 0 < after.next_at - due <= 60
    assert after.next_at == cron_next("* * * * *", after.last_fired_at, KATHMANDU)
    job = app.scheduler.get_job("reminders")
    assert job is not None and job.next_run_time.timestamp() == after.next_at
    await app.bus.wait_idle()  # the firing's turn has ended: what it sent was sent
    assert reminders_so_far(await chat.events_so_far()) == []  # once, until the next minute
    await chat.close()


async def test_reminders_command_lists_every_reminder(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(FAST)
    chat = await connect(app)
    empty = await chat.ask("/reminders")
    assert empty["role"] == "system" and "No reminders" in empty["text"]
    elsewhere = ThreadId("web_" + "c" * 32)
    now = time.time()
    for new in (
        NewReminder(ThreadId(chat.thread_id), "Call mum", now + 3600),
        NewReminder(elsewhere, "Back up the laptop", now + 7200, system=True,
                    cron="0 3 * * *"),
        NewReminder(ThreadId(chat.thread_id), "Stretch", now + 600, every_seconds=1800),
    ):
        await app.reminders.add(new)
    calls = len(fake_llm.requests)
    text = (await chat.ask("/reminders"))["text"]
    assert len(fake_llm.requests) == calls  # a command: no model call
    lines = [ln for ln in text.splitlines() if ln.startswith("- #")]
    assert [ln.split(" ")[1] for ln in lines] == ["#3", "#1", "#2"]  # soonest first
    assert "every 30 min" in lines[0] and "this conversation: Stretch" in lines[0]
    assert "once" in lines[1] and "message" in lines[1]
    assert "cron 0 3 * * *" in lines[2] and "system" in lines[2] and elsewhere in lines[2]
    shown = datetime.fromtimestamp(now + 3600, KATHMANDU).strftime("%a %Y-%m-%d %H:%M")
    assert shown in lines[1] and "+0545" in lines[1]
    await chat.close()
