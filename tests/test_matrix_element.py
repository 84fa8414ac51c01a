"""The Matrix interface as people use it in Element, against a real Synapse with real E2EE
clients: the first message of a new chat, threads, replies, rooms emptied of allowed users,
history it cannot read, and what it says when it may not redact.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from conftest import AppFactory
from fake_llm import FakeLLM
from matrix_rooms import (
    in_thread,
    joined_room,
    relation,
    send_content,
    start_bot,
    talking_bot,
)
from nio import RoomLeaveResponse
from synapse import Human, HumanFactory, MatrixUser, Synapse

from ganglion.interfaces.matrix import interface as matrix_interface
from ganglion.interfaces.matrix.catchup import SINCE_INVITE_MAX


def last_user_text(body: dict[str, Any]) -> str:
    return [m["content"] for m in body["messages"] if m["role"] == "user"][-1]


def user_texts(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


def bodies(human: Human, room: str, bot: MatrixUser) -> list[str]:
    return [m.body for m in human.messages_from(room, bot.user_id)]


async def raw_event(synapse: Synapse, human: Human, room: str, event_id: str) -> Any:
    """An event as the homeserver holds it (nio would decrypt it)."""
    url = f"{synapse.url}/_matrix/client/v3/rooms/{quote(room)}/event/{quote(event_id)}"
    headers = {"Authorization": f"Bearer {human.user.access_token}"}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json()


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


@pytest.mark.matrix
async def test_a_thread_is_a_conversation_of_its_own_answered_in_the_thread(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    app, human, room, bot = await talking_bot(synapse, app_factory, humans, tmp_path)
    root = await human.send(room, "my name is Ada")
    assert (await human.next_message(room, bot.user_id, 0)).body == "echo: my name is Ada"

    asked = await send_content(human, room, in_thread(root, "what is my name?"))
    answer = await human.next_message(room, bot.user_id, 1)
    # In the thread (for a person alone with the bot, not shown as a reply).
    assert relation(answer) == {"rel_type": "m.thread", "event_id": root,
                                "is_falling_back": True, "m.in_reply_to": {"event_id": asked}}
    # Its own history: nothing of the main timeline but the message the thread began with,
    # quoted as context (fenced: not instructions).
    first = user_texts(fake_llm.requests[-1])
    assert len(first) == 1 and first[0].startswith("what is my name?\n\n[data from the "
                                                   f"message of {human.user.user_id} that "
                                                   "began this thread")
    assert "my name is Ada" in first[0]
    await send_content(human, room, in_thread(root, "and again?", latest=answer.event_id))
    again = await human.next_message(room, bot.user_id, 2)
    assert again.body == "echo: and again?"
    assert relation(again)["event_id"] == root  # type: ignore[index]
    assert user_texts(fake_llm.requests[-1]) == [first[0], "and again?"]

    await human.send(room, "back in the room")
    back = await human.next_message(room, bot.user_id, 3)
    assert back.body == "echo: back in the room" and relation(back) is None
    assert user_texts(fake_llm.requests[-1]) == ["my name is Ada", "back in the room"]
    rows = await app.db.fetchall("SELECT thread_id FROM inbox ORDER BY id")
    assert [r["thread_id"] for r in rows] == [room, f"{room}/{root}", f"{room}/{root}", room]
    # Encrypted, the relation stays in the clear too (homeservers and Element read it there).
    wire = await raw_event(synapse, human, room, again.event_id)
    assert wire["type"] == "m.room.encrypted" and "ciphertext" in wire["content"]
    assert wire["content"]["m.relates_to"] == relation(again)


@pytest.mark.matrix
async def test_answers_are_replies_in_a_room_of_three_and_plain_in_a_dm(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    bot = await synapse.register("bot")
    ann_user, bob_user = await synapse.register("ann"), await synapse.register("bob")
    await start_bot(app_factory, synapse, bot, [ann_user.user_id, bob_user.user_id],
                    tmp_path / "store")
    ann, bob = await humans(ann_user), await humans(bob_user)
    dm = await joined_room(ann, bot)
    await ann.send(dm, "just us")
    plain = await ann.next_message(dm, bot.user_id, 0)
    assert plain.body == "echo: just us" and relation(plain) is None

    room = await ann.create_room(invite=[bot.user_id, bob_user.user_id])
    await bob.join(room)
    await ann.wait_joined(room, bot.user_id)
    await ann.wait_joined(room, bob_user.user_id)
    question = await ann.send(room, "which day is it?")
    answer = await ann.next_message(room, bot.user_id, 0)
    assert answer.body == "echo: which day is it?"
    assert relation(answer) == {"m.in_reply_to": {"event_id": question}}

    # Bob replies to Ann's message: the model gets his words and, fenced, what he answers
    # (not the quote his client put in the body).
    reply = await send_content(bob, room, {
        "msgtype": "m.text", "body": f"> <{ann_user.user_id}> which day is it?\n\nand the year?",
        "m.relates_to": {"m.in_reply_to": {"event_id": question}}})
    second = await ann.next_message(room, bot.user_id, 1)
    assert relation(second) == {"m.in_reply_to": {"event_id": reply}}
    seen = user_texts(fake_llm.requests[-1])[-1]
    assert seen.startswith("and the year?\n\n[data from the message of "
                           f"{ann_user.user_id} this replies to")
    assert seen.count("which day is it?") == 1 and "> <" not in seen


def test_the_relation_of_an_answer_follows_reply_mode() -> None:
    from ganglion.interfaces.matrix.relations import names_target, relates_to

    room, asked = "!r:example.org", "$asked"
    thread = f"{room}/$root"
    reply = {"m.in_reply_to": {"event_id": asked}}
    for mode, dm, group in (("auto", None, reply), ("always", reply, reply),
                            ("never", None, None)):
        assert relates_to(room, asked, 1, mode) == dm, mode
        assert relates_to(room, asked, 2, mode) == group, mode
        assert relates_to(room, None, 2, mode) is None  # a reminder, a notice: nothing to answer
        assert relates_to(room, asked, 2, mode, first=False) is None  # a long answer's rest
        in_thread = relates_to(thread, asked, 2, mode)
        assert in_thread is not None and in_thread["rel_type"] == "m.thread"
        assert in_thread["is_falling_back"] is (group is None)
        # The answered event is looked up only where a relation names it.
        assert names_target(room, 1, mode) is (dm is not None)
        assert names_target(room, 2, mode) is (group is not None)
        assert names_target(thread, 1, mode)
    rest = relates_to(thread, asked, 5, "always", first=False)
    assert rest == {"rel_type": "m.thread", "event_id": "$root", "is_falling_back": True,
                    "m.in_reply_to": {"event_id": "$root"}}


@pytest.mark.matrix
async def test_the_bot_leaves_a_room_no_allowed_user_remains_in(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    bot = await synapse.register("bot")
    ann_user, bob_user = await synapse.register("ann"), await synapse.register("bob")
    guest_user = await synapse.register("guest")  # in the room, not allowed
    await start_bot(app_factory, synapse, bot, [ann_user.user_id, bob_user.user_id],
                    tmp_path / "store")
    ann, bob, guest = await humans(ann_user), await humans(bob_user), await humans(guest_user)
    room = await ann.create_room(invite=[bot.user_id, bob_user.user_id, guest_user.user_id])
    await bob.join(room)
    await guest.join(room)
    await ann.wait_joined(room, bot.user_id)

    # Bob leaves: Ann remains, so the bot stays (it answers her after it saw him go).
    assert isinstance(await bob.client.room_leave(room), RoomLeaveResponse)
    await ann.until(lambda: ann.member(room, bob_user.user_id) == "leave")
    await ann.send(room, "still here?")
    assert (await ann.next_message(room, bot.user_id, 0)).body == "echo: still here?"
    assert guest.member(room, bot.user_id) == "join"

    # Ann leaves too: only a guest it does not answer remains.
    await ann.client.room_leave(room)
    await guest.until(lambda: guest.member(room, bot.user_id) == "leave")
    assert any("no allowed user remains" in r.getMessage() and room in r.getMessage()
               for r in caplog.records)


@pytest.mark.matrix
async def test_unreadable_history_of_a_joined_room_is_one_log_line(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """Encrypted messages from before the invite were never meant for the bot's device:
    nio's warning for each would bury the lines that matter."""
    caplog.set_level(logging.INFO)
    bot, person = await synapse.register("bot"), await synapse.register("human")
    app = await start_bot(app_factory, synapse, bot, [person.user_id], tmp_path / "store")
    human = await humans(person)
    room = await human.create_room(invite=[])
    for i in range(6):
        await human.send(room, f"old {i}")
    await human.invite(room, bot.user_id)
    await human.wait_joined(room, bot.user_id)
    await human.send(room, "new")
    assert (await human.next_message(room, bot.user_id, 0)).body == "echo: new"
    assert app.matrix is not None
    await app.stop()  # the last sync's summary is written

    lines = [r.getMessage() for r in caplog.records if room in r.getMessage()]
    summaries = [line for line in lines if "could not be decrypted" in line]
    assert len(summaries) == 1 and "6 encrypted event(s)" in summaries[0], lines
    assert not [line for line in lines if line.startswith("Error decrypting megolm")]
    assert [last_user_text(r) for r in fake_llm.requests] == ["new"]


@pytest.mark.matrix
async def test_a_key_the_bot_may_not_redact_is_told_to_the_sender_and_once_to_the_owner(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    bot = await synapse.register("bot")
    boss_user, ted_user = await synapse.register("owner"), await synapse.register("trusted")
    await start_bot(app_factory, synapse, bot, [boss_user.user_id, ted_user.user_id],
                    tmp_path / "store", owner=boss_user.user_id,
                    trusted_users=[ted_user.user_id])
    boss, ted = await humans(boss_user), await humans(ted_user)
    dm = await joined_room(boss, bot)
    await boss.send(dm, "hi")  # where the owner wrote last
    assert (await boss.next_message(dm, bot.user_id, 0)).body == "echo: hi"

    room = await joined_room(ted, bot)  # Ted's room: the bot has power level 0 there
    for i, name in enumerate(("first", "second")):
        await ted.send(room, f"!add_endpoint {name} {fake_llm.base_url} sk-{name}-key-5e3c9a1")
        reply = await ted.next_message(room, bot.user_id, i)
        assert ("I could not remove your message: I lack the power to remove other people's "
                "messages in this room (it takes power level 50; mine is 0)") in reply.body
        assert "delete the message yourself" in reply.body

    await boss.send(dm, "anything new?")  # behind the owner's notice, if there were two
    assert (await boss.next_message(dm, bot.user_id, 2)).body == "echo: anything new?"
    said = bodies(boss, dm, bot)
    assert len(said) == 3 and said[0] == "echo: hi" and said[2] == "echo: anything new?"
    assert ted_user.user_id in said[1] and room in said[1]
    assert "could not remove the message: I lack the power" in said[1]


@pytest.mark.matrix
async def test_a_long_wait_for_the_join_is_read_back_to_the_invite_and_bounded(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    store = tmp_path / "store"
    extra = {"owner": person.user_id}  # not rate limited: a dozen messages at once
    first = await start_bot(app_factory, synapse, bot, [person.user_id], store, **extra)
    await first.stop()
    human = await humans(person)
    room = await human.create_room(invite=[bot.user_id])
    said = [f"waiting {i}" for i in range(SINCE_INVITE_MAX + 2)]
    for text in said:
        await human.send(room, text)
    # The join's timeline holds the newest 3 events: the rest is read back to the invite.
    monkeypatch.setitem(matrix_interface.SYNC_FILTER["room"]["timeline"], "limit", 3)
    app = await start_bot(app_factory, synapse, bot, [person.user_id], store, **extra)
    answered = said[-SINCE_INVITE_MAX:]  # the newest ones
    await human.until(lambda: len(human.messages_from(room, bot.user_id)) >= len(answered), 60)
    await app.bus.wait_idle()
    await human.sync()
    assert bodies(human, room, bot) == [f"echo: {text}" for text in answered]
    assert [last_user_text(r) for r in fake_llm.requests] == answered


@pytest.mark.matrix
async def test_a_first_message_the_bot_cannot_decrypt_is_reported(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    """The sender's client did not share the room key with the invited device: never silence."""
    bot, person = await synapse.register("bot"), await synapse.register("human")
    store = tmp_path / "store"
    first = await start_bot(app_factory, synapse, bot, [person.user_id], store)
    await first.stop()
    human = await humans(person)
    room = await human.create_room(invite=[bot.user_id])
    device = await human.until(
        lambda: human.client.device_store[bot.user_id].get(bot.device_id))
    human.client.blacklist_device(device)
    await human.send(room, "can you read this?")
    await start_bot(app_factory, synapse, bot, [person.user_id], store)
    notice = await human.next_message(room, bot.user_id, 0)
    assert "could not read a message" in notice.body
    assert fake_llm.requests == []
