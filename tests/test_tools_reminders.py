"""Reminder tools as the model uses them: list_reminders and cancel_reminder see this
conversation's reminders only (an autonomous turn its own, the global review all of them but
it cancels only its own), and bad arguments get an error saying what to send instead.
"""

from __future__ import annotations

import json
import time
from datetime import datetime, timedelta
from typing import Any

from conftest import AppFactory, connect
from fake_llm import FakeLLM, Reply, tool_results
from reminder_helpers import FAST, KATHMANDU

from ganglion.messages import ThreadId
from ganglion.storage.reminders import NewReminder
from ganglion.tools.registry import ToolContext


async def test_list_reminders_shows_this_conversations_reminders(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(FAST)
    chat = await connect(app)
    mine = ThreadId(chat.thread_id)
    hour = time.time() - time.time() % 3600 + 3600  # whole minutes: no seconds shown
    for new in (
        NewReminder(mine, "Call mum", hour + 7200),
        NewReminder(ThreadId("web_" + "e" * 32), "Not yours", hour + 60),
        NewReminder(mine, "Back up the laptop", hour + 600, system=True, cron="10 * * * *"),
        NewReminder(mine, "Stretch", hour, every_seconds=1800),
    ):
        await app.reminders.add(new)
    fake_llm.script(Reply(tool_calls=[("list_reminders", {})]), Reply(text="Here they are."))
    assert (await chat.ask("what reminders do I have?"))["text"] == "Here they are."
    (result,) = tool_results(fake_llm.requests[-1])
    assert "not instructions" in result  # output, fenced as data like any tool's
    body = result.split("\n", 1)[1].rsplit("\n", 1)[0]

    def at(ts: float) -> str:
        return datetime.fromtimestamp(ts, KATHMANDU).strftime("%a %Y-%m-%d %H:%M +0545")

    assert body.splitlines() == [
        "3 active reminder(s) in this conversation (1 more in other conversations; the user "
        "sees all of them with /reminders):",
        f"- #4 {at(hour)}, every 30 min: Stretch",
        f"- #3 {at(hour + 600)}, cron 10 * * * *, system task: Back up the laptop",
        f"- #1 {at(hour + 7200)}, once: Call mum",
    ]
    await chat.close()


async def test_the_tools_refuse_bad_arguments_with_what_to_send_instead(
    app_factory: AppFactory,
) -> None:
    app = await app_factory(FAST)
    ctx = ToolContext(ThreadId("web_" + "a" * 32), "web")
    today = datetime.now(KATHMANDU)

    async def error(name: str, **args: Any) -> str:
        outcome = await app.tools.call(name, json.dumps(args), ctx)
        assert not outcome.ok, outcome
        return outcome.text

    assert "say when" in await error("set_reminder", text="x")
    assert "either at or in_minutes" in await error("set_reminder", text="x", at="2099-01-01T09:00",
                                                    in_minutes=5)
    bad_at = await error("set_reminder", text="x", at="tomorrow 9am")
    assert "not a local date and time" in bad_at
    assert f'"{today + timedelta(days=1):%Y-%m-%d}T09:00"' in bad_at  # tomorrow's date, in TZ
    assert "no time of day" in await error("set_reminder", text="x", at="2099-01-01")
    assert "has passed" in await error("set_reminder", text="x", at="2001-01-01T09:00")
    assert "more than 0" in await error("set_reminder", text="x", in_minutes=-5)
    assert "5 fields" in await error("set_reminder", text="x", cron="every monday")
    assert "cron sets the times" in await error("set_reminder", text="x", cron="0 9 * * *",
                                                in_minutes=5)
    assert "at least 0.01" in await error("set_reminder", text="x", every_minutes=0.001)
    assert "text is empty" in await error("set_reminder", text="  ", in_minutes=5)
    assert "no reminder #99" in await error("cancel_reminder", reminder_id=99)
    assert "must be an integer" in await error("cancel_reminder", reminder_id="one")
    system_ctx = ToolContext(ThreadId("system:heartbeat"), "heartbeat")
    outcome = await app.tools.call("set_reminder", json.dumps({"text": "x", "in_minutes": 5}),
                                   system_ctx)
    assert not outcome.ok and "would reach nobody" in outcome.text
    assert await app.reminder_store.active() == []

    # A reminder of another conversation can be neither listed nor cancelled from here.
    other = ToolContext(ThreadId("web_" + "b" * 32), "web")
    ok = await app.tools.call("set_reminder", json.dumps({"text": "theirs", "in_minutes": 60}),
                              other)
    assert ok.ok
    listed = await app.tools.call("list_reminders", "{}", ctx)
    assert "No active reminders in this conversation" in listed.text and "1 more" in listed.text
    assert "no reminder #1 in this conversation" in await error("cancel_reminder", reminder_id=1)


async def test_autonomous_turns_reach_only_their_own_reminders(app_factory: AppFactory) -> None:
    """A system reminder's task, or the global review, reads files tools write: a prompt put
    there must not list or cancel the user's reminders."""
    app = await app_factory(FAST)
    web = ThreadId("web_" + "a" * 32)
    later = time.time() + 3600
    for new in (
        NewReminder(web, "Call mum", later),  # 1: the user's, a message
        NewReminder(web, "Check the backup log", later, system=True),  # 2: the user's task
        NewReminder(ThreadId("system:heartbeat"), "Tidy HEARTBEATS.txt", later,
                    system=True),  # 3: set by the global review
        NewReminder(ThreadId("system:reminder-2"), "Look again", later,
                    system=True),  # 4: set by task #2
    ):
        await app.reminders.add(new)

    async def call(thread: str, name: str, **args: Any) -> tuple[bool, str]:
        outcome = await app.tools.call(name, json.dumps(args),
                                       ToolContext(ThreadId(thread), "reminder"))
        return outcome.ok, outcome.text

    def listed(text: str) -> list[str]:
        return [ln.split(" ", 2)[1] for ln in text.splitlines() if ln.startswith("- #")]

    # Task #2 sees itself and what it set, nothing else; it may cancel neither #1 nor #3.
    ok, text = await call("system:reminder-2", "list_reminders")
    assert ok and listed(text) == ["#2", "#4"], text
    for other in (1, 3):
        ok, text = await call("system:reminder-2", "cancel_reminder", reminder_id=other)
        assert not ok and f"no reminder #{other} in this conversation" in text
    # The global review lists everything, and cancels only what it set.
    ok, text = await call("system:heartbeat", "list_reminders")
    assert ok and listed(text) == ["#1", "#2", "#3", "#4"], text
    assert f"in {web}: Call mum" in text and "set by you: Tidy HEARTBEATS.txt" in text
    for other in (1, 2, 4):
        ok, text = await call("system:heartbeat", "cancel_reminder", reminder_id=other)
        assert not ok and "may cancel only the reminders it set" in text, text
    assert (await call("system:heartbeat", "cancel_reminder", reminder_id=3))[0]
    # A task may end itself (a recurring check that is done).
    assert (await call("system:reminder-2", "cancel_reminder", reminder_id=2))[0]
    assert [r.id for r in await app.reminder_store.active()] == [1, 4]


async def test_the_schemas_read_off_the_class_are_the_running_tools_schemas(
    app_factory: AppFactory,
) -> None:
    # check-config counts the reminder tools' schemas without a started App: they must be
    # the very schemas the model is offered.
    from ganglion.tools.registry import tool_from_function
    from ganglion.tools.reminders import ReminderTools

    app = await app_factory()
    running = {n: app.tools.schemas({n})[0] for n in ("set_reminder", "list_reminders",
                                                        "cancel_reminder")}
    read_off = {t.name: t.schema() for t in map(tool_from_function,
                                                 ReminderTools.signatures())}
    assert read_off == running
