"""The conversation list over the WebSocket: listed newest first and titled by the first
words, renamed, archived, deleted with everything of it (reminders unscheduled), malformed
frames refused whole, Matrix rooms read-only."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from conftest import AppFactory, connect, eventually
from fake_llm import FakeLLM, Reply
from wsclient import ChatClient

from ganglion.messages import Inbound, Source, ThreadId
from ganglion.storage.history import NewMessage
from ganglion.storage.reminders import NewReminder


async def frame_of(chat: ChatClient, kind: str) -> dict[str, Any]:
    while (event := await chat.next_event()).get("type") != kind:
        pass
    return event


async def listing(chat: ChatClient) -> dict[str, Any]:
    await chat.send_raw({"type": "list"})
    return await frame_of(chat, "conversations")


async def test_conversations_are_listed_newest_first_and_titled_by_their_first_words(
    app_factory: AppFactory, database_url: str
) -> None:
    app = await app_factory()
    first = await connect(app)
    await first.ask("What should I cook tonight with leeks, potatoes and a little cream?")
    second = await connect(app)
    await second.ask("hello")
    items = (await listing(first))["items"]
    assert [i["thread_id"] for i in items] == [second.thread_id, first.thread_id]
    assert items[1]["title"] == "What should I cook tonight with leeks, potatoes…"
    assert items[1]["title_by"] == "words" and not items[1]["archived"]
    await first.ask("and for dessert?")  # activity moves it up
    items = (await listing(second))["items"]
    assert [i["thread_id"] for i in items] == [first.thread_id, second.thread_id]
    await first.close()
    await second.close()


async def test_rename_and_archive_reach_every_tab_and_a_malformed_frame_changes_nothing(
    app_factory: AppFactory, database_url: str
) -> None:
    app = await app_factory()
    chat = await connect(app)
    await chat.ask("first words")
    other = await connect(app)  # another conversation's tab: its sidebar follows too
    tid = chat.thread_id
    for bad, why in [
        ({"type": "rename", "thread_id": tid}, "title"),
        ({"type": "rename", "thread_id": tid, "title": 7}, "title"),
        ({"type": "rename", "thread_id": tid, "title": "   "}, "title"),
        ({"type": "rename", "thread_id": "web_xyz", "title": "x"}, "thread_id"),
        ({"type": "rename", "thread_id": tid, "title": "x", "extra": 1}, "extra"),
        ({"type": "delete", "thread_id": tid + "\n"}, "thread_id"),
        ({"type": "delete"}, "thread_id"),
        ({"type": "archive", "thread_id": tid, "archived": "yes"}, "archived"),
    ]:
        await chat.send_raw(bad)
        error = await frame_of(chat, "error")
        assert error["code"] == "bad_frame" and why in error["message"], (bad, error)
        assert "nothing was changed" in error["message"]
    conversation = await app.web.conversations.conversations.get(ThreadId(tid))  # type: ignore[union-attr]
    assert conversation is not None and conversation.title == "first words"
    assert len(await app.history.transcript(ThreadId(tid))) == 2

    hostile = "<img src=x onerror=alert(1)> <b>bold</b>\u202e\n" + "x" * 300
    await chat.send_raw({"type": "rename", "thread_id": tid, "title": hostile})
    changed = (await frame_of(other, "conversation"))["item"]
    assert changed["title"] == ("<img src=x onerror=alert(1)> <b>bold</b> " + "x" * 300)[:80]
    assert changed["title_by"] == "person"  # kept as text, one line, capped; the page sets
    await chat.send_raw({"type": "archive", "thread_id": tid, "archived": True})
    assert (await frame_of(other, "conversation"))["item"]["archived"] is True
    missing = "web_" + "0" * 32
    await chat.send_raw({"type": "rename", "thread_id": missing, "title": "x"})
    assert (await frame_of(chat, "error"))["code"] == "not_found"
    await chat.close()
    await other.close()


async def test_delete_removes_everything_of_the_conversation_and_unschedules_its_reminders(
    app_factory: AppFactory, fake_llm: FakeLLM, database_url: str
) -> None:
    app = await app_factory()
    chat = await connect(app)
    second_tab = await connect(app, chat.thread_id)
    tid = ThreadId(chat.thread_id)
    await chat.ask("remember the milk")
    await app.reminders.add(NewReminder(tid, "Milk", time.time() + 3600))
    await app.reminders.add(NewReminder(tid, "Eggs", time.time() + 7200))
    kept = await app.reminders.add(NewReminder(ThreadId("web_" + "1" * 32), "Other",
                                               time.time() + 5400))
    # An undelivered notice in its outbox, and a message waiting behind a running turn.
    await app.history.finish_turn(tid, None, [NewMessage("notice", "later", deliver=True)])
    fake_llm.script(Reply(hang=True))
    await app.bus.submit(Inbound(tid, "runs", "web", Source.WEB, "r1"))
    await app.bus.submit(Inbound(tid, "waits", "web", Source.WEB, "r2"))
    # Counted once the first is running (its question is in history then): counted while
    # it was still starting, the question was there or not by chance.
    await fake_llm.wait_until(lambda: any(
        r["messages"][-1].get("content") == "runs" for r in fake_llm.requests))
    await chat.send_raw({"type": "contents", "thread_id": tid})
    contents = await frame_of(chat, "contents")
    assert (contents["messages"], contents["pending"], contents["reminders"]) == (4, 2, 2)

    await chat.send_raw({"type": "delete", "thread_id": tid})
    assert (await frame_of(second_tab, "conversation_deleted"))["thread_id"] == tid
    await app.bus.wait_idle()
    for table in ("messages", "inbox", "outbox", "reminders", "conversations"):
        row = await app.db.fetchone(f"SELECT count(*) AS n FROM {table} WHERE thread_id = ?",
                                    (tid,))
        assert row is not None and row["n"] == 0, table
    assert [r.id for r in await app.reminder_store.active()] == [kept.id]
    assert await app.reminder_store.next_due_at() == kept.next_at  # the timer moved on
    assert tid not in [i["thread_id"] for i in (await listing(chat))["items"]]
    await chat.close()
    await second_tab.close()


async def test_matrix_rooms_are_listed_and_read_but_not_writable(
    app_factory: AppFactory, database_url: str
) -> None:
    app = await app_factory()
    room = ThreadId("!room:example.org")
    await app.history.finish_turn(room, None, [NewMessage("user", "from matrix"),
                                              NewMessage("assistant", "*hi* there")])
    chat = await connect(app)
    rooms = (await listing(chat))["rooms"]
    assert [r["thread_id"] for r in rooms] == [room]
    await chat.send_raw({"type": "read", "thread_id": room})
    read = await frame_of(chat, "room")
    assert [m["text"] for m in read["transcript"]] == ["from matrix", "*hi* there"]
    assert read["transcript"][1]["html"] == "<p><em>hi</em> there</p>"
    # Only web conversations can be renamed or deleted from the page.
    await chat.send_raw({"type": "delete", "thread_id": room})
    assert (await frame_of(chat, "error"))["code"] == "bad_frame"
    assert len(await app.history.transcript(room)) == 2
    await chat.close()


async def test_the_model_titles_a_conversation_after_its_first_exchange_from_the_same_prompt(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory({"web": {"titles": "model"}})
    fake_llm.script(Reply(text="Leeks are in season."),
                    Reply(text='"<b>Leek</b> dinner ideas."\nMore text'),
                    Reply(text="Try a gratin."))
    chat = await connect(app)
    watcher = await connect(app)  # another tab's sidebar
    assert (await chat.ask("What can I cook with leeks?"))["text"] == "Leeks are in season."
    item = (await frame_of(watcher, "conversation"))["item"]
    assert item["title"] == "What can I cook with leeks?" and item["title_by"] == "words"
    item = (await frame_of(watcher, "conversation"))["item"]
    assert item["title"] == "<b>Leek</b> dinner ideas" and item["title_by"] == "model"
    turn, title = fake_llm.requests[0], fake_llm.requests[1]
    # The turn's own request, its answer, one instruction: the cached prefix is shared.
    assert title["messages"][:len(turn["messages"])] == turn["messages"]
    assert title.get("tools") == turn.get("tools")
    assert title["messages"][len(turn["messages"])] == {
        "role": "assistant", "content": "Leeks are in season."}
    assert "short title" in title["messages"][-1]["content"]
    assert len(title["messages"]) == len(turn["messages"]) + 2
    # Asked once: the next exchange keeps the title and makes no title request.
    assert (await chat.ask("And a side?"))["text"] == "Try a gratin."
    await app.bus.wait_idle()
    assert len(fake_llm.requests) == 3
    conversation = await app.conversations.get(ThreadId(chat.thread_id))
    assert conversation is not None and conversation.title == "<b>Leek</b> dinner ideas"
    await chat.close()
    await watcher.close()


async def test_a_failed_title_request_keeps_the_first_words(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory({"web": {"titles": "model"}})
    fake_llm.script(Reply(text="Sure."), Reply(status=500), Reply(status=500))
    chat = await connect(app)
    await chat.ask("Plan my week please")
    await eventually(lambda: len(fake_llm.requests) >= 3)  # the title asked, and retried
    await app.titler.stop()  # its task has ended: nothing is pending
    conversation = await app.conversations.get(ThreadId(chat.thread_id))
    assert conversation is not None
    assert (conversation.title, conversation.title_by) == ("Plan my week please", "words")
    await chat.close()



async def test_a_title_that_keeps_giving_way_is_asked_three_times_at_most(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    # A person writing fast: each title request is still held when the next message comes,
    # so it gives way; after three, no more are started in this run.
    app = await app_factory({"web": {"titles": "model"}})
    never = asyncio.Event()

    def is_title(body: dict[str, Any]) -> bool:
        return "short title" in str(body["messages"][-1].get("content"))

    def answer(body: dict[str, Any]) -> Reply:
        return Reply(text="A title", held=never) if is_title(body) else Reply(text="answer")

    fake_llm.script(*[answer] * 20)
    chat = await connect(app)
    for n in range(5):
        assert (await chat.ask(f"question {n}"))["text"] == "answer"
        if n < 3:  # its title request starts once the bus is idle, and is held
            async with asyncio.timeout(10):
                await fake_llm.wait_until(
                    lambda n=n: sum(map(is_title, fake_llm.requests)) == n + 1
                    and fake_llm.in_flight == 1)
        else:  # the turn ended without starting one: none is being asked
            assert not app.titler.asking(ThreadId(chat.thread_id))
    assert sum(map(is_title, fake_llm.requests)) == 3
    await chat.close()
