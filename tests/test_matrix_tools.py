"""What the assistant does on its own in a real encrypted Matrix room: tool call notices
(``matrix.show_tool_calls``) and reminders delivered into a quiet room.

The same set-up as tests/test_matrix.py: a real Synapse shared by the session, a ``Human``
nio client with its own encryption store, fresh users per test.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import pytest
from conftest import AppFactory, merge
from fake_llm import FakeLLM, Reply
from matrix_rooms import joined_room, matrix_section, talking_bot
from synapse import Human, HumanFactory, Synapse

from ganglion.app import App

TRICKY_PATH = "notes/```<b>bold</b> @room.txt"
"""A call whose text would close a code fence, inject HTML and ping the room if trusted."""


async def ask_with_two_tool_calls(fake_llm: FakeLLM, human: Human, room: str) -> None:
    """The human asks; the model calls list_dir and read_file(TRICKY_PATH), then says "Listed."."""
    fake_llm.script(Reply(tool_calls=[("list_dir", {}), ("read_file", {"path": TRICKY_PATH})]),
                    Reply(text="Listed."))
    await human.send(room, "what is in my folder?")


@pytest.mark.matrix
async def test_tool_calls_are_short_notices_when_show_tool_calls_is_on(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    _, human, room, bot = await talking_bot(synapse, app_factory, humans, tmp_path,
                                            show_tool_calls=True)
    await ask_with_two_tool_calls(fake_llm, human, room)
    listed, failed, answer = [await human.next_message(room, bot.user_id, i) for i in range(3)]
    assert answer.body == "Listed." and type(answer).__name__ == "RoomMessageText"

    for notice in (listed, failed):
        assert type(notice).__name__ == "RoomMessageNotice", notice  # never pings
        assert notice.decrypted and "\n" not in notice.body and len(notice.body) < 300
        assert notice.source["content"]["m.mentions"] == {}
    assert re.fullmatch(r"Tool list_dir · ok in \d+ ms, [\d,]+ characters", listed.body), \
        listed.body
    assert "MEMORIES.txt" not in listed.body  # the output itself stays out of the room
    assert re.fullmatch(rf"Tool read_file: {re.escape(TRICKY_PATH)} · error after \d+ ms",
                        failed.body), failed.body
    # Rendered as text: the call in <code>, its markup escaped, no fence to close early.
    assert failed.formatted_body.startswith(
        "Tool <code>read_file: notes/```&lt;b&gt;bold&lt;/b&gt; @room.txt</code> · error after ")
    assert "<b>" not in failed.formatted_body and "<pre>" not in failed.formatted_body


@pytest.mark.matrix
async def test_no_tool_notices_when_show_tool_calls_is_off(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    app, human, room, bot = await talking_bot(synapse, app_factory, humans, tmp_path)
    await ask_with_two_tool_calls(fake_llm, human, room)
    assert (await human.next_message(room, bot.user_id, 0)).body == "Listed."
    await app.bus.wait_idle()
    await human.sync()
    assert [m.body for m in human.messages_from(room, bot.user_id)] == ["Listed."]
    assert len([m for m in fake_llm.requests[-1]["messages"] if m["role"] == "tool"]) == 2


@pytest.mark.matrix
async def test_a_reminder_reaches_a_quiet_encrypted_room(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    fast = {"scheduler": {"timezone": "Asia/Kathmandu", "min_repeat_minutes": 0.01}}
    app: App = await app_factory(merge(
        matrix_section(synapse, bot, [person.user_id], tmp_path / "store"), fast))
    assert app.matrix is not None
    await asyncio.wait_for(app.matrix.ready.wait(), 20)
    human = await humans(person)
    room = await joined_room(human, bot)

    fake_llm.script(Reply(tool_calls=[("set_reminder", {"text": "Stand-up in the blue room",
                                                        "in_minutes": 0.05})]),
                    Reply(text="Noted."))
    await human.send(room, "remind me of the stand-up in 3 seconds")
    assert (await human.next_message(room, bot.user_id, 0)).body == "Noted."
    reminder = await app.reminder_store.get(1)
    assert reminder is not None and reminder.thread_id == room
    # The human says nothing more; the reminder arrives all the same, encrypted.
    delivered = await human.next_message(room, bot.user_id, 1)
    assert delivered.decrypted and type(delivered).__name__ == "RoomMessageText"
    assert delivered.body == "⏰ Reminder: Stand-up in the blue room"
    done = await app.reminder_store.get(1)
    assert done is not None and (done.status, done.fired) == ("done", 1)
    assert len(human.messages_from(room, person.user_id)) == 1
