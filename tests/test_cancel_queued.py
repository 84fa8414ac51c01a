"""Queued messages cancelled over the WebSocket (the page's Cancel queued, and /cancel): never
run, also after a restart, each shown as cancelled; the running turn goes on."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import AppFactory, connect, eventually_async
from fake_llm import FakeLLM, Reply
from wsclient import ChatClient

from ganglion.messages import Inbound, Source, ThreadId


async def test_cancel_drops_the_queued_messages_for_good_and_the_running_turn_goes_on(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    held = asyncio.Event()
    fake_llm.script(Reply(text="first answer", held=held))
    chat = await connect(app)
    assert (await chat.send("first", "c0"))["type"] == "ack"
    while (await chat.next_event()).get("state") != "thinking":
        pass  # the first turn runs (its model call held)
    for i in range(1, 5):
        assert (await chat.send(f"queued {i}", f"c{i}"))["type"] == "ack"
    await chat.send_raw({"type": "cancel"})
    while (event := await chat.next_event()).get("type") != "cancelled":
        pass
    assert event["ids"] == ["c1", "c2", "c3", "c4"]
    held.set()
    assert (await chat.reply())["text"] == "first answer"
    await app.bus.wait_idle()
    assert len(fake_llm.requests) == 1  # none of the cancelled ones ran
    # Shown as cancelled when the tab comes back; the model's context never had them.
    again = await connect(app, chat.thread_id)
    users = [m for m in again.ready["transcript"] if m["role"] == "user"]
    assert [(m["text"], m.get("cancelled", False)) for m in users] == [
        ("first", False), *((f"queued {i}", True) for i in range(1, 5))]
    assert again.ready["pending"] == []
    context = await app.history.context(ThreadId(chat.thread_id))
    assert [m.content for m in context if m.role == "user"] == ["first"]
    await again.close()
    await chat.close()
    # Across a restart: nothing of them is recovered and run.
    await app.stop()
    app2 = await app_factory()
    assert await app2.inbox.pending() == []
    await app2.bus.wait_idle()
    assert len(fake_llm.requests) == 1


async def test_slash_cancel_answers_at_once_and_each_tab_marks_them(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    held = asyncio.Event()
    fake_llm.script(Reply(text="first answer", held=held), Reply(text="after"))
    chat = await connect(app)
    other = await connect(app, chat.thread_id)
    await chat.send("first", "c0")
    for i in range(1, 4):
        await chat.send(f"queued {i}", f"c{i}")
    reply_ack = await chat.send("/cancel", "cancel-1")
    assert reply_ack["type"] == "ack"
    reply = await chat.reply()  # immediate: it does not wait behind the held turn
    assert reply["text"] == "Cancelled 3 queued messages; they will not be answered."
    while (event := await other.next_event()).get("type") != "cancelled":
        pass
    assert event["ids"] == ["c1", "c2", "c3"]
    assert (await chat.send("/cancel", "cancel-2"))["type"] == "ack"
    assert (await chat.reply())["text"] == "No message is waiting in this conversation."
    held.set()
    assert (await chat.reply())["text"] == "first answer"
    # A message sent after the cancel is answered as usual.
    assert (await chat.ask("later"))["text"] == "after"
    await other.close()
    await chat.close()


async def test_a_lane_emptied_by_cancel_before_its_turn_began_is_let_go(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    """With every runner busy elsewhere, a thread waits in line; all its messages cancelled,
    the runner that reaches it lets it go, and the thread works again afterwards."""
    app = await app_factory({"bus": {"max_turns_in_flight": 1}})
    held = asyncio.Event()
    fake_llm.script(Reply(text="busy", held=held), Reply(text="fine again"))
    busy = await connect(app)
    await busy.send("keep the runner", "b0")
    while (await busy.next_event()).get("state") != "thinking":
        pass
    chat = await connect(app)
    await chat.send("waits in line", "w1")
    await chat.send_raw({"type": "cancel"})
    while (event := await chat.next_event()).get("type") != "cancelled":
        pass
    assert event["ids"] == ["w1"]
    held.set()
    assert (await busy.reply())["text"] == "busy"
    await app.bus.wait_idle()
    assert len(fake_llm.requests) == 1
    assert (await chat.ask("now?"))["text"] == "fine again"
    await busy.close()
    await chat.close()


async def test_a_long_backlog_is_shown_as_its_newest_messages_and_a_count(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    held = asyncio.Event()
    fake_llm.script(Reply(text="first answer", held=held))
    tid = ThreadId("web_" + "c" * 32)
    await app.bus.submit(Inbound(tid, "first", "web", Source.WEB, "q0"))
    await app.bus.submit_many([Inbound(tid, f"queued {i}", "web", Source.WEB, f"q{i}")
                               for i in range(1, 251)])
    await fake_llm.wait_until(lambda: bool(fake_llm.requests))  # "first" has begun
    chat = await connect(app, tid)
    # The running one is in the transcript; of the 250 waiting, the newest 100 and a count.
    assert [m["text"] for m in chat.ready["transcript"]] == ["first"]
    assert [p["id"] for p in chat.ready["pending"]] == [f"q{i}" for i in range(151, 251)]
    assert chat.ready["pending_hidden"] == 150
    await chat.send_raw({"type": "cancel"})
    event = await next_of(chat, "cancelled")
    assert event["ids"] == [f"q{i}" for i in range(1, 251)]
    held.set()
    assert (await chat.reply())["text"] == "first answer"
    await app.bus.wait_idle()
    assert len(fake_llm.requests) == 1
    await chat.close()


async def next_of(chat: ChatClient, kind: str) -> dict[str, Any]:
    while (event := await chat.next_event()).get("type") != kind:
        pass
    return event


async def test_a_member_of_a_shared_room_cancels_only_their_own(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    # Two allowed users in one Matrix room: /cancel from one drops only that one's queued
    # messages; the owner's drops everyone's. (Submitted as the Matrix interface does; the
    # replies wait in the outbox, as no homeserver is configured here.)
    app = await app_factory({"matrix": {"owner": "@own:x"}})
    room = ThreadId("!room:x")
    held = asyncio.Event()
    fake_llm.script(Reply(text="first answer", held=held))

    def said(sender: str, text: str, n: int) -> Inbound:
        return Inbound(room, text, sender=sender, source=Source.MATRIX, client_id=f"$e{n}")

    await app.bus.submit(said("@ann:x", "first", 0))
    async with asyncio.timeout(10):
        await fake_llm.wait_until(lambda: fake_llm.in_flight == 1)
    for n, sender in enumerate(["@ann:x", "@bob:x", "@ann:x", "@bob:x"], start=1):
        await app.bus.submit(said(sender, f"queued {n}", n))
    async def cancelled(count: int) -> bool:
        rows = await app.db.fetchall("SELECT content FROM messages WHERE name = 'cancelled' "
                                     "ORDER BY inbox_id")
        texts[:] = [r["content"] for r in rows]
        return len(texts) >= count

    texts: list[str] = []
    await app.bus.submit(said("@bob:x", "/cancel", 10))
    await eventually_async(lambda: cancelled(2))
    assert texts == ["queued 2", "queued 4"]
    await app.bus.submit(said("@own:x", "/cancel", 11))
    await eventually_async(lambda: cancelled(4))
    assert texts == ["queued 1", "queued 2", "queued 3", "queued 4"]
    held.set()
    await app.bus.wait_idle()
    assert len(fake_llm.requests) == 1
