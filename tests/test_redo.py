"""Regenerate and edit-and-resend over the WebSocket (issue 14 item 4): the last exchange is
kept as replaced (shown collapsed, out of the model's context and search) and answered again
through the durable inbox; refused while a turn runs, once per client id, malformed frames
change nothing, and a SIGKILL after the acknowledgement is answered once after restart."""

from __future__ import annotations

import asyncio
import io
import sqlite3
from pathlib import Path
from typing import Any

import aiohttp
from conftest import AppFactory, connect, daemon_config, eventually
from daemon import Daemon
from fake_llm import FakeLLM, Reply, image_parts, user_messages
from PIL import Image
from wsclient import ChatClient, until

from ganglion.app import App
from ganglion.messages import ThreadId
from ganglion.storage.search import Search


async def redo(chat: ChatClient, frame: dict[str, Any]) -> dict[str, Any]:
    """Send a regenerate or edit frame; its ack or error (other events kept, in order)."""
    return await chat.request(frame)


def seen_by_model(body: dict[str, Any]) -> list[tuple[str, str]]:
    """(role, text) of the user and assistant messages a model request carried."""
    return [(m["role"], m["content"]) for m in body["messages"]
            if m["role"] in ("user", "assistant") and isinstance(m.get("content"), str)]


async def rows(app: App, thread: str) -> list[tuple[str, str, str | None, int]]:
    """(role, content, replaced, in_context) of the thread's history, in order."""
    found = await app.history.db.fetchall(
        "SELECT role, content, replaced, in_context FROM messages WHERE thread_id = ?"
        " ORDER BY id", (thread,))
    return [(r["role"], r["content"], r["replaced"], r["in_context"]) for r in found]


async def test_regenerate_keeps_the_old_answer_as_replaced_and_the_model_no_longer_sees_it(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    chat = await connect(app)
    other = await connect(app, chat.thread_id)  # a second tab on the conversation
    first = await chat.ask("tell me about owls")
    assert first["text"] == "echo: tell me about owls"
    fake_llm.script(Reply(text="owls hunt at night"))
    ack = await redo(chat, {"type": "regenerate", "id": "r1", "after": first["id"]})
    assert ack == {"type": "ack", "id": "r1", "duplicate": False}
    for tab in (chat, other):
        replaced = await until(tab, lambda e: e["type"] == "replaced")
        assert replaced == {"type": "replaced", "how": "regenerated", "ids": [first["id"]],
                            "client_ids": []}
        assert (await tab.reply())["text"] == "owls hunt at night"
    assert seen_by_model(fake_llm.requests[-1])[-1:] == [("user", "tell me about owls")]
    assert ("assistant", "echo: tell me about owls") not in seen_by_model(
        fake_llm.requests[-1])
    # History keeps it, out of the context; the question is stored once.
    assert await rows(app, chat.thread_id) == [
        ("user", "tell me about owls", None, 1),
        ("assistant", "echo: tell me about owls", "regenerated", 0),
        ("assistant", "owls hunt at night", None, 1)]
    # A tab that opens the conversation sees it collapsed; search finds only what stands.
    again = await connect(app, chat.thread_id)
    shown = [(m["role"], m["text"], m.get("replaced")) for m in again.ready["transcript"]]
    assert shown == [("user", "tell me about owls", None),
                     ("assistant", "echo: tell me about owls", "regenerated"),
                     ("assistant", "owls hunt at night", None)]
    assert again.ready["pending"] == []
    hits = await Search(app.history.db).search("owls")
    assert [h.message_id for h in hits] == [m["id"] for m in again.ready["transcript"]
                                            if m.get("replaced") is None][::-1]
    # And again: the answer that stands now is the one replaced.
    fake_llm.script(Reply(text="third take"))
    last = again.ready["transcript"][-1]["id"]
    assert (await redo(again, {"type": "regenerate", "id": "r2", "after": last}))["type"] == "ack"
    assert (await again.reply())["text"] == "third take"
    assert [m for m in seen_by_model(fake_llm.requests[-1]) if m[0] == "assistant"] == []
    for tab in (chat, other, again):
        await tab.close()


async def test_a_commands_answer_after_the_exchange_stays_and_the_new_answer_follows_it(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    """/model (here /help) between an answer and Regenerate: the command's answer is no part
    of the exchange replaced."""
    app = await app_factory()
    chat = await connect(app)
    answer = await chat.ask("which model?")
    helped = await chat.ask("/help")
    fake_llm.script(Reply(text="a new answer"))
    assert (await redo(chat, {"type": "regenerate", "id": "r1", "after": helped["id"]}))[
        "type"] == "ack"
    replaced = await until(chat, lambda e: e["type"] == "replaced")
    assert replaced["ids"] == [answer["id"]]
    assert (await chat.reply())["text"] == "a new answer"
    assert [(r[0], r[2]) for r in await rows(app, chat.thread_id)] == [
        ("user", None), ("assistant", "regenerated"), ("notice", None), ("assistant", None)]
    await chat.close()


async def test_edit_and_resend_replaces_the_question_and_its_answer(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    chat = await connect(app)
    other = await connect(app, chat.thread_id)
    assert (await chat.ask("hello there"))["text"] == "echo: hello there"
    await chat.send("about cats", "q-cats")
    answer = await chat.reply()
    ack = await redo(chat, {"type": "edit", "id": "e1", "after": answer["id"],
                            "text": "about dogs"})
    assert ack["type"] == "ack", ack
    for tab in (chat, other):
        replaced = await until(tab, lambda e: e["type"] == "replaced")
        assert replaced["how"] == "edited" and replaced["client_ids"] == ["q-cats"]
        assert replaced["ids"][-1] == answer["id"] and len(replaced["ids"]) == 2
        assert await until(tab, lambda e: e["type"] == "pending") == {
            "type": "pending", "id": "e1", "text": "about dogs"}
        assert (await tab.reply())["text"] == "echo: about dogs"
    seen = seen_by_model(fake_llm.requests[-1])
    assert seen == [("user", "hello there"), ("assistant", "echo: hello there"),
                    ("user", "about dogs")]
    assert [r for r in await rows(app, chat.thread_id) if r[2]] == [
        ("user", "about cats", "edited", 0), ("assistant", "echo: about cats", "edited", 0)]
    context = await app.history.context(ThreadId(chat.thread_id))
    assert [m.content for m in context][-2:] == ["about dogs", "echo: about dogs"]
    await chat.close()
    await other.close()


async def test_an_edit_keeps_the_questions_picture_and_a_regenerate_sees_it_too(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory({"llm": {"vision_models": ["fake-model"]}})
    assert app.web is not None
    out = io.BytesIO()
    Image.new("RGB", (8, 8), "red").save(out, "PNG")
    form = aiohttp.FormData()
    form.add_field("file", out.getvalue(), filename="red.png", content_type="image/png")
    async with aiohttp.ClientSession() as session, session.post(
            f"{app.web.url}/upload", data=form,
            headers={"Authorization": f"Bearer {app.web_token}"}) as resp:
        media = (await resp.json())["id"]
    chat = await connect(app)
    await chat.send_raw({"type": "send", "id": "q1", "text": "what colour?",
                         "attachments": [media]})
    answer = await chat.reply()
    await redo(chat, {"type": "edit", "id": "e1", "after": answer["id"],
                      "text": "which colour is it?"})
    answer = await chat.reply()
    last = user_messages(fake_llm.requests[-1])[-1]
    assert last["content"][0] == {"type": "text", "text": "which colour is it?"}
    assert len(image_parts(last)) == 1
    await redo(chat, {"type": "regenerate", "id": "r1", "after": answer["id"]})
    await chat.reply()
    assert len(image_parts(user_messages(fake_llm.requests[-1])[-1])) == 1
    await chat.close()


async def test_editing_the_first_message_retitles_a_conversation_titled_by_its_words(
    app_factory: AppFactory,
) -> None:
    app = await app_factory()
    chat = await connect(app)
    answer = await chat.ask("a typo in the frist message")
    await redo(chat, {"type": "edit", "id": "e1", "after": answer["id"],
                      "text": "no typo in the first message"})
    changed = await until(chat, lambda e: e["type"] == "conversation")
    assert changed["item"]["title"] == "no typo in the first message"
    await chat.close()


async def test_refused_while_a_turn_runs_or_waits_and_when_not_the_last(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    chat = await connect(app)
    first = await chat.ask("one")
    second = await chat.ask("two")
    held = asyncio.Event()
    fake_llm.script(Reply(text="three answered", held=held))
    await chat.send("three")
    await until(chat, lambda e: e.get("state") == "thinking")
    before = await rows(app, chat.thread_id)
    for frame in ({"type": "regenerate", "id": "r1", "after": second["id"]},
                  {"type": "edit", "id": "e1", "after": second["id"], "text": "2"}):
        refused = await redo(chat, frame)
        assert refused["code"] == "busy"
        assert "wait for the answer, or Stop it first" in refused["message"]
    held.set()
    three = await chat.reply()
    assert three["text"] == "three answered"
    await app.bus.wait_idle()
    # Not the last exchange the page shows: refused, with what to do.
    stale = await redo(chat, {"type": "regenerate", "id": "r2", "after": first["id"]})
    assert stale["code"] == "not_last" and "newer message" in stale["message"]
    # After /new the last exchange has left the model's context.
    await chat.send("/new")
    divider = await chat.reply()
    gone = await redo(chat, {"type": "regenerate", "id": "r3", "after": divider["id"]})
    assert gone["code"] == "not_last" and "no longer in the model's context" in gone["message"]
    after = await rows(app, chat.thread_id)
    assert [r[:3] for r in after[:len(before)]] == [r[:3] for r in before]  # /new: out
    assert [r for r in after if r[2]] == []  # of context, and nothing replaced
    assert len(fake_llm.requests) == 3
    await chat.close()


async def test_a_resent_regenerate_with_the_same_client_id_runs_once(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    chat = await connect(app)
    answer = await chat.ask("once")
    held = asyncio.Event()
    fake_llm.script(Reply(text="regenerated once", held=held))
    frame = {"type": "regenerate", "id": "same", "after": answer["id"]}
    assert (await redo(chat, frame))["duplicate"] is False
    # Resent while its turn runs (a reconnecting page): acknowledged, not run or refused.
    assert (await redo(chat, frame)) == {"type": "ack", "id": "same", "duplicate": True}
    # A tab opened meanwhile shows no queued question: the one asked again is in history.
    joined = await connect(app, chat.thread_id)
    assert joined.ready["pending"] == [] and joined.ready["state"] == "thinking"
    await joined.close()
    held.set()
    assert (await chat.reply())["text"] == "regenerated once"
    await until(chat, lambda e: e.get("state") == "idle")
    assert (await redo(chat, frame))["duplicate"] is True  # and after it was answered
    await app.bus.wait_idle()
    # Nothing more came of the resends: no replacement, no turn.
    assert [e["type"] for e in await chat.events_so_far()
            if e["type"] in ("replaced", "message", "state")] == []
    assert len(fake_llm.requests) == 2
    assert [r[1] for r in await rows(app, chat.thread_id) if r[2] is None] == [
        "once", "regenerated once"]
    await chat.close()


async def test_malformed_frames_are_refused_and_change_nothing(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory({"web": {"max_message_bytes": 1000}})
    chat = await connect(app)
    answer = await chat.ask("keep me")
    last = answer["id"]
    before = await rows(app, chat.thread_id)
    bad: list[tuple[dict[str, Any], str]] = [
        ({"type": "regenerate", "after": last}, "id"),
        ({"type": "regenerate", "id": "x" * 65, "after": last}, "id"),
        ({"type": "regenerate", "id": "b1"}, "after"),
        ({"type": "regenerate", "id": "b2", "after": str(last)}, "after"),
        ({"type": "regenerate", "id": "b3", "after": True}, "after"),
        ({"type": "regenerate", "id": "b4", "after": 0}, "after"),
        ({"type": "regenerate", "id": "b5", "after": last, "text": "x"}, "text"),
        ({"type": "edit", "id": "b6", "after": last}, "text"),
        ({"type": "edit", "id": "b7", "after": last, "text": "   "}, "non-empty"),
        ({"type": "edit", "id": "b8", "after": last, "text": ["no"]}, "text"),
        ({"type": "edit", "id": "b9", "after": last, "text": "/new"}, "command"),
    ]
    for frame, says in bad:
        await chat.send_raw(frame)
        error = await until(chat, lambda e: e["type"] == "error")
        assert error["code"] == "bad_frame", (frame, error)
        assert says in error["message"] and "nothing was changed" in error["message"], error
        assert error.get("id") == (frame["id"] if len(frame.get("id", "x" * 65)) < 65
                                   else None)
    big = await redo(chat, {"type": "edit", "id": "b10", "after": last, "text": "é" * 600})
    assert big["code"] == "too_large"
    assert await rows(app, chat.thread_id) == before
    assert len(await app.inbox.pending()) == 0
    assert len(fake_llm.requests) == 1
    # The conversation works as before, and so does a good frame.
    fake_llm.script(Reply(text="fine"))
    assert (await redo(chat, {"type": "regenerate", "id": "ok", "after": last}))["type"] == "ack"
    assert (await chat.reply())["text"] == "fine"
    await chat.close()


async def test_a_regenerate_acknowledged_then_sigkilled_is_answered_once_after_restart(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    data = tmp_path / "data"
    async with Daemon(tmp_path, daemon_config(fake_llm)) as daemon:
        chat = await daemon.connect()
        first = await chat.ask("survive a crash")
        fake_llm.script(Reply(text="cut off by the kill", chunk_delay=5.0))
        ack = await redo(chat, {"type": "regenerate", "id": "r1", "after": first["id"]})
        assert ack["type"] == "ack"
        await eventually(lambda: len(fake_llm.requests) == 2, 10)  # the answer has begun
        daemon.kill()  # SIGKILL: no cleanup at all
        await chat.close()

        daemon.start()
        await daemon.wait_ready()
        chat = await daemon.connect(chat.thread_id)
        assert (await chat.reply(timeout=15))["text"] == "echo: survive a crash"
        assert daemon.text().count("recovered 1 unanswered message(s)") == 1
        # The resent frame (a page reconnecting) is known: acknowledged, not run again.
        assert (await redo(chat, {"type": "regenerate", "id": "r1", "after": first["id"]}))[
            "duplicate"] is True
        await chat.close()
        assert await daemon.stop() == 0
    with sqlite3.connect(data / "conversation.db") as conn:
        assert list(conn.execute(
            "SELECT role, content, replaced FROM messages ORDER BY id")) == [
            ("user", "survive a crash", None),
            ("assistant", "echo: survive a crash", "regenerated"),
            ("assistant", "echo: survive a crash", None)]
        assert [r[0] for r in conn.execute("SELECT status FROM inbox")] == ["done", "done"]
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert len(fake_llm.requests) == 3
