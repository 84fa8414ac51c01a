"""The Matrix interface as people use it in Element, against a real Synapse with real E2EE
clients: the first message of a new chat, threads, replies, rooms emptied of allowed users,
history it cannot read, and what it says when it may not redact.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import AppFactory
from fake_llm import FakeLLM
from matrix_rooms import start_bot
from synapse import Human, HumanFactory, MatrixUser, Synapse


def last_user_text(body: dict[str, Any]) -> str:
    return [m["content"] for m in body["messages"] if m["role"] == "user"][-1]


def bodies(human: Human, room: str, bot: MatrixUser) -> list[str]:
    return [m.body for m in human.messages_from(room, bot.user_id)]


@pytest.mark.matrix
async def test_the_first_message_of_a_new_chat_is_answered_once(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    """Element's "start chat": the room is made, the bot invited and the first message sent
    before the bot joins (here: while it is down). What came before the invite is not for it."""
    bot, person = await synapse.register("bot"), await synapse.register("human")
    store = tmp_path / "store"
    first = await start_bot(app_factory, synapse, bot, [person.user_id], store)
    await first.stop()  # its device keys are published: the human can encrypt for it

    human = await humans(person)
    room = await human.create_room(invite=[])
    await human.send(room, "said before the invite")
    await human.invite(room, bot.user_id)
    await human.until(lambda: human.member(room, bot.user_id) == "invite")
    await human.send(room, "hello, are you there?")

    second = await start_bot(app_factory, synapse, bot, [person.user_id], store)
    answer = await human.next_message(room, bot.user_id, 0)
    assert answer.decrypted and answer.body == "echo: hello, are you there?"
    await second.stop()

    await start_bot(app_factory, synapse, bot, [person.user_id], store)
    await human.send(room, "and now?")
    assert (await human.next_message(room, bot.user_id, 1)).body == "echo: and now?"
    assert bodies(human, room, bot) == ["echo: hello, are you there?", "echo: and now?"]
    assert [last_user_text(r) for r in fake_llm.requests] == ["hello, are you there?",
                                                              "and now?"]
