"""The Matrix interface against a real Synapse: encrypted rooms, restarts, strangers, outages.

A second nio client (``Human``, with its own store and encryption) plays the person. The
homeserver is shared by the session (tests/synapse.py); every test registers its own users.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import LLM_KEY, AppFactory, daemon_config, eventually, eventually_async, merge
from daemon import Daemon
from fake_llm import FakeLLM, Reply, system_of
from hs_proxy import HomeserverProxy, hs_proxy  # noqa: F401  (fixture)
from matrix_rooms import joined_room, matrix_section, start_bot, talking_bot
from nio import (
    AsyncClient,
    JoinResponse,
    LoginResponse,
    RoomKeyRequest,
    ToDeviceMessage,
    ToDeviceResponse,
)
from synapse import Human, HumanFactory, MatrixUser, Synapse

from ganglion.app import App
from ganglion.config import load_config
from ganglion.errors import StartupError
from ganglion.interfaces.matrix import interface as matrix_interface
from ganglion.messages import Inbound, Source, ThreadId


async def echoed(human: Human, room: str, bot: MatrixUser, text: str, n: int) -> None:
    """``human`` says ``text``; the bot's ``n``-th message in the room (from 0) is its echo."""
    await human.send(room, text)
    assert (await human.next_message(room, bot.user_id, n)).body == f"echo: {text}"


def last_user_text(body: dict[str, Any]) -> str:
    return [m["content"] for m in body["messages"] if m["role"] == "user"][-1]


def user_texts(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


@pytest.mark.matrix
async def test_encrypted_room_invite_question_and_formatted_answer(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    app = await start_bot(app_factory, synapse, bot, [person.user_id], tmp_path / "store")
    human = await humans(person)
    room = await human.create_room(invite=[bot.user_id])
    await human.wait_joined(room, bot.user_id)  # auto-join on an allowed user's invite

    fake_llm.script(Reply(text="The answer is **forty-two**.\n\n- one\n- two"))
    question = await human.send(room, "what is the answer?")
    answer = await human.next_message(room, bot.user_id, 0)
    assert type(answer).__name__ == "RoomMessageText", answer  # decrypted by the human
    assert answer.decrypted
    assert answer.body == "The answer is **forty-two**.\n\n- one\n- two"
    assert answer.format == "org.matrix.custom.html"
    assert "<strong>forty-two</strong>" in answer.formatted_body
    assert "<li>one</li>" in answer.formatted_body
    assert last_user_text(fake_llm.requests[-1]) == "what is the answer?"
    system = system_of(fake_llm.requests[-1])
    assert room in system  # the prompt says which room it talks in
    rows = await app.db.fetchall("SELECT client_id, meta FROM inbox")
    assert [(r["client_id"], json.loads(r["meta"])) for r in rows] == [
        (question, {"event_id": question, "encrypted": "1"})]


@pytest.mark.matrix
async def test_two_rooms_keep_separate_conversations(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    app = await start_bot(app_factory, synapse, bot, [person.user_id], tmp_path / "store")
    human = await humans(person)
    room_a = await human.create_room(invite=[bot.user_id])
    room_b = await human.create_room(invite=[bot.user_id], encrypted=False)
    await human.wait_joined(room_a, bot.user_id)
    await human.wait_joined(room_b, bot.user_id)

    await human.send(room_a, "my name is Ada")
    await human.send(room_b, "my name is Bob")
    assert (await human.next_message(room_a, bot.user_id, 0)).body == "echo: my name is Ada"
    assert (await human.next_message(room_b, bot.user_id, 0)).body == "echo: my name is Bob"
    await human.send(room_a, "what is my name?")
    await human.next_message(room_a, bot.user_id, 1)
    assert user_texts(fake_llm.requests[-1]) == ["my name is Ada", "what is my name?"]
    await human.send(room_b, "and mine?")
    await human.next_message(room_b, bot.user_id, 1)
    assert user_texts(fake_llm.requests[-1]) == ["my name is Bob", "and mine?"]
    rows = await app.db.fetchall("SELECT thread_id, meta FROM inbox ORDER BY id")
    assert {r["thread_id"]: json.loads(r["meta"])["encrypted"] for r in rows} == {
        room_a: "1", room_b: "0"}
    assert not human.messages_from(room_b, bot.user_id)[0].decrypted  # plain in a plain room


def olm_sessions(client: Any, user_id: str, device_id: str) -> int:
    """How many Olm sessions ``client`` holds with that device (by its identity key)."""
    key = client.device_store[user_id][device_id].curve25519
    return len(client.olm.session_store[key])


@pytest.mark.matrix
async def test_restart_keeps_the_device_and_answers_what_came_meanwhile_once(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    store = tmp_path / "store"
    first = await start_bot(app_factory, synapse, bot, [person.user_id], store)
    human = await humans(person)
    room = await joined_room(human, bot)
    await echoed(human, room, bot, "one", 0)
    assert first.matrix is not None and first.matrix.client is not None
    identity = first.matrix.client.olm.account.identity_keys["curve25519"]
    human_sessions = olm_sessions(human.client, bot.user_id, bot.device_id)
    bot_sessions = olm_sessions(first.matrix.client, person.user_id, person.device_id)
    await first.stop()

    await human.send(room, "two")  # while the bot is down
    second = await start_bot(app_factory, synapse, bot, [person.user_id], store)
    answer = await human.next_message(room, bot.user_id, 1)
    assert answer.decrypted and answer.body == "echo: two"
    await echoed(human, room, bot, "three", 2)

    # Answered exactly once each: nothing from before the restart was answered again.
    assert [m.body for m in human.messages_from(room, bot.user_id)] == [
        "echo: one", "echo: two", "echo: three"]
    assert [last_user_text(r) for r in fake_llm.requests] == ["one", "two", "three"]
    assert user_texts(fake_llm.requests[-1]) == ["one", "two", "three"]
    # The same device with the same keys: no new Olm session on either side.
    assert second.matrix is not None and second.matrix.client is not None
    assert second.matrix.client.olm.account.identity_keys["curve25519"] == identity
    assert human.client.device_store[bot.user_id][bot.device_id].curve25519 == identity
    assert olm_sessions(human.client, bot.user_id, bot.device_id) == human_sessions
    assert olm_sessions(second.matrix.client, person.user_id, person.device_id) == bot_sessions


@pytest.mark.matrix
async def test_replies_still_go_out_after_the_conversation_database_is_reset(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    """Message ids start again in a new conversation.db; with the same device, a reply's
    transaction id must still be new, or the homeserver takes it for a resend and drops it."""
    bot, person = await synapse.register("bot"), await synapse.register("human")
    store = tmp_path / "store"
    first = await start_bot(app_factory, synapse, bot, [person.user_id], store)
    human = await humans(person)
    room = await joined_room(human, bot)
    await echoed(human, room, bot, "one", 0)
    await first.stop()
    for name in ("conversation.db", "conversation.db-wal", "conversation.db-shm"):
        (tmp_path / "data" / name).unlink(missing_ok=True)

    await start_bot(app_factory, synapse, bot, [person.user_id], store)
    await echoed(human, room, bot, "two", 1)


@pytest.mark.matrix
async def test_after_a_restart_the_bot_speaks_first_in_a_quiet_encrypted_room(
    synapse: Synapse, app_factory: AppFactory, humans: HumanFactory,
    tmp_path: Path,
) -> None:
    """nio keeps no room state: without a full-state sync the restarted bot would not know
    the room, nor that it is encrypted, and could not post there before someone writes."""
    bot, person = await synapse.register("bot"), await synapse.register("human")
    store = tmp_path / "store"
    first = await start_bot(app_factory, synapse, bot, [person.user_id], store)
    human = await humans(person)
    room = await joined_room(human, bot)
    await first.stop()

    second = await start_bot(app_factory, synapse, bot, [person.user_id], store)
    await second.router.broadcast("speaking first", ThreadId(room), role="assistant")
    said = await human.next_message(room, bot.user_id, 0)
    assert said.decrypted and said.body == "speaking first"


@pytest.mark.matrix
async def test_a_busy_absence_is_caught_up_past_a_limited_timeline(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ganglion.interfaces.matrix.interface")
    bot, person = await synapse.register("bot"), await synapse.register("human")
    store = tmp_path / "store"
    # The owner: not rate limited (a dozen messages in a few seconds).
    first = await start_bot(app_factory, synapse, bot, [person.user_id], store,
                            owner=person.user_id)
    human = await humans(person)
    room = await joined_room(human, bot)
    await echoed(human, room, bot, "before", 0)
    await first.stop()

    missed = [f"while away {i}" for i in range(12)]
    for text in missed:
        await human.send(room, text)
    # The homeserver sends the 3 newest of them and marks the timeline limited.
    monkeypatch.setitem(matrix_interface.SYNC_FILTER["room"]["timeline"], "limit", 3)
    await start_bot(app_factory, synapse, bot, [person.user_id], store, owner=person.user_id)
    await human.until(lambda: len(human.messages_from(room, bot.user_id)) >= 13, 60)

    assert any("limited sync left out" in r.getMessage() for r in caplog.records)
    assert [m.body for m in human.messages_from(room, bot.user_id)] == [
        "echo: before", *[f"echo: {text}" for text in missed]]
    assert [last_user_text(r) for r in fake_llm.requests] == ["before", *missed]


@pytest.mark.matrix
async def test_a_page_of_history_that_fails_is_fetched_again(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    hs_proxy: HomeserverProxy,  # noqa: F811
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    store = tmp_path / "store"
    extra = {"owner": person.user_id, "homeserver": hs_proxy.url}
    first = await start_bot(app_factory, synapse, bot, [person.user_id], store, **extra)
    human = await humans(person)
    room = await joined_room(human, bot)
    await first.stop()
    missed = [f"while away {i}" for i in range(8)]
    for text in missed:
        await human.send(room, text)
    monkeypatch.setitem(matrix_interface.SYNC_FILTER["room"]["timeline"], "limit", 3)
    hs_proxy.fail, hs_proxy.fail_times = re.compile(r"^GET .*/rooms/[^/]+/messages"), 1
    second = await start_bot(app_factory, synapse, bot, [person.user_id], store, **extra)
    assert second.matrix is not None
    second.matrix.backoff_max = 0.3
    await human.until(lambda: len(human.messages_from(room, bot.user_id)) >= 8, 60)
    assert hs_proxy.failed  # the first try at the gap failed: read again, nothing lost
    assert [m.body for m in human.messages_from(room, bot.user_id)] == [
        f"echo: {text}" for text in missed]


@pytest.mark.matrix
async def test_a_homeserver_that_never_answers_a_sync_is_given_up_on_and_retried(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    hs_proxy: HomeserverProxy,  # noqa: F811
) -> None:
    monkeypatch.setattr(matrix_interface, "SYNC_GRACE", 1.0)
    bot, person = await synapse.register("bot"), await synapse.register("human")
    hs_proxy.hang = re.compile(r"^GET .*/sync")  # takes the connection, never answers
    app = await app_factory(matrix_section(synapse, bot, [person.user_id], tmp_path / "store",
                                           homeserver=hs_proxy.url))
    assert app.matrix is not None
    app.matrix.backoff_max = 0.3
    await eventually(lambda: len(hs_proxy.hung) >= 2, 20)  # the proxy only counts
    hs_proxy.release()
    await asyncio.wait_for(app.matrix.ready.wait(), 20)
    human = await humans(person)
    room = await joined_room(human, bot)
    await echoed(human, room, bot, "still there?", 0)


@pytest.mark.matrix
async def test_the_bot_never_answers_itself_even_open_to_everyone(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    await start_bot(app_factory, synapse, bot, ["*"], tmp_path / "store")
    human = await humans(person)
    room = await joined_room(human, bot)
    await echoed(human, room, bot, "hi", 0)
    await echoed(human, room, bot, "bye", 1)
    assert [last_user_text(r) for r in fake_llm.requests] == ["hi", "bye"]


@pytest.mark.matrix
async def test_a_stranger_is_ignored_and_their_invite_refused(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    stranger_user = await synapse.register("stranger")
    await start_bot(app_factory, synapse, bot, [person.user_id], tmp_path / "store")
    stranger = await humans(stranger_user)
    their_room = await stranger.create_room(invite=[bot.user_id])
    await stranger.until(lambda: stranger.member(their_room, bot.user_id) == "leave")

    human = await humans(person)
    room = await human.create_room(invite=[bot.user_id, stranger_user.user_id])
    await human.wait_joined(room, bot.user_id)
    await stranger.join(room)
    await human.wait_joined(room, stranger_user.user_id)
    await stranger.send(room, "hello from a stranger")
    await human.until(lambda: human.messages_from(room, stranger_user.user_id))
    await echoed(human, room, bot, "hello from the owner", 0)
    assert len(fake_llm.requests) == 1
    assert user_texts(fake_llm.requests[0]) == ["hello from the owner"]
    assert len(human.messages_from(room, bot.user_id)) == 1


@pytest.mark.matrix
async def test_history_from_before_the_first_start_is_not_answered(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    human = await humans(person)
    room = await human.create_room(invite=[bot.user_id], encrypted=False)
    # The bot's account joins and the room talks before Ganglion ever ran.
    elsewhere = AsyncClient(synapse.url, bot.user_id)
    elsewhere.restore_login(bot.user_id, bot.device_id, bot.access_token)
    assert isinstance(await elsewhere.join(room), JoinResponse)
    await human.send(room, "an old message")
    login = await elsewhere.login(bot.password, device_name="Ganglion")
    await elsewhere.close()
    assert isinstance(login, LoginResponse)
    device = MatrixUser(bot.user_id, bot.password, login.access_token, login.device_id)

    await start_bot(app_factory, synapse, device, [person.user_id], tmp_path / "store")
    await echoed(human, room, bot, "a new message", 0)
    assert [user_texts(r) for r in fake_llm.requests] == [["a new message"]]


@pytest.mark.matrix
async def test_what_a_room_said_before_the_bot_was_invited_is_not_answered(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    """(What was said between the invite and the join is: test_matrix_element.py.)"""
    bot, person = await synapse.register("bot"), await synapse.register("human")
    human = await humans(person)
    # An invite waiting since before the first start, into an encrypted room that talked.
    waiting = await human.create_room(invite=[])
    await human.send(waiting, "said before the bot ever ran")
    await human.invite(waiting, bot.user_id)
    app = await start_bot(app_factory, synapse, bot, [person.user_id], tmp_path / "store")
    await human.wait_joined(waiting, bot.user_id)
    # A room with an earlier conversation, the bot invited while it runs.
    talked = await human.create_room(invite=[], encrypted=False)
    for text in ("old one", "old two"):
        await human.send(talked, text)
    await human.invite(talked, bot.user_id)
    await human.wait_joined(talked, bot.user_id)

    for room in (waiting, talked):
        await human.send(room, "new")
    for room in (waiting, talked):
        assert (await human.next_message(room, bot.user_id, 0)).body == "echo: new"
    assert app.matrix is not None
    await app.bus.wait_idle()
    assert [user_texts(r) for r in fake_llm.requests] == [["new"], ["new"]]
    # No "could not read" notice for the encrypted history either: one message a room.
    await human.sync()
    for room in (waiting, talked):
        assert len(human.messages_from(room, bot.user_id)) == 1


@pytest.mark.matrix
async def test_allowed_rooms_limits_where_it_joins(
    synapse: Synapse, app_factory: AppFactory, humans: HumanFactory,
    tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    await start_bot(app_factory, synapse, bot, [person.user_id], tmp_path / "store",
                    allowed_rooms=["!somewhere-else:localhost"])
    human = await humans(person)
    room = await human.create_room(invite=[bot.user_id])
    await human.until(lambda: human.member(room, bot.user_id) == "leave")


@pytest.mark.matrix
async def test_allowed_rooms_joins_a_listed_room_and_ignores_the_others(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    store = tmp_path / "store"
    human = await humans(person)
    first = await start_bot(app_factory, synapse, bot, [person.user_id], store)
    dropped = await human.create_room(invite=[bot.user_id])  # joined while any room was fine
    await human.wait_joined(dropped, bot.user_id)
    await first.stop()
    listed = await human.create_room(invite=[])

    await start_bot(app_factory, synapse, bot, [person.user_id], store,
                    allowed_rooms=[listed])
    await human.invite(listed, bot.user_id)
    await human.wait_joined(listed, bot.user_id)
    await human.send(dropped, "in a room no longer listed")
    await echoed(human, listed, bot, "in the listed room", 0)
    await echoed(human, listed, bot, "again", 1)
    assert human.messages_from(dropped, bot.user_id) == []
    assert [last_user_text(r) for r in fake_llm.requests] == ["in the listed room", "again"]


@pytest.mark.matrix
async def test_recovers_by_itself_when_the_homeserver_comes_back(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    app, human, room, bot = await talking_bot(synapse, app_factory, humans, tmp_path)
    await human.send(room, "before")
    await human.next_message(room, bot.user_id, 0)

    await synapse.stop()
    try:
        # Work for the room arrives while the homeserver is gone (as a reminder would): the
        # replies cannot be sent and wait in the outbox.
        for i in (1, 2):
            await app.bus.submit(Inbound(ThreadId(room), f"queued {i}", human.user.user_id,
                                         Source.MATRIX, f"outage-{i}"))

        async def both_waiting() -> bool:
            # No event tells when a send failed; the outbox (SQLite) is the state to watch.
            return len(await app.outbox.pending(ThreadId(room))) >= 2

        await eventually_async(both_waiting, 20)
    finally:
        await synapse.start()
    # Back: the sync loop reconnects by itself and sends the queued replies, in order.
    await human.next_message(room, bot.user_id, 2)
    assert [m.body for m in human.messages_from(room, bot.user_id)] == [
        "echo: before", "echo: queued 1", "echo: queued 2"]
    await echoed(human, room, bot, "after", 3)

    async def none_waiting() -> bool:
        # Marked delivered once the homeserver has accepted the send, which the human's sync
        # may show first: the mark is waited for, not assumed.
        return await app.outbox.pending(ThreadId(room)) == []

    await eventually_async(none_waiting, 10)


@pytest.mark.matrix
async def test_a_room_key_that_missed_a_device_is_made_anew_and_the_reply_is_readable(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path, hs_proxy: HomeserverProxy,  # noqa: F811
) -> None:
    _, human, room, bot = await talking_bot(synapse, app_factory, humans, tmp_path,
                                            homeserver=hs_proxy.url)
    # The bot's first reply shares its room key over to-device: that send fails once.
    hs_proxy.fail, hs_proxy.fail_times = re.compile(r"^PUT .*/sendToDevice/m.room.encrypted/"), 1
    await human.send(room, "one")
    reply = await human.next_message(room, bot.user_id, 0)
    assert hs_proxy.failed
    assert reply.decrypted and reply.body == "echo: one"  # not a message nobody can read


@pytest.mark.matrix
async def test_a_reply_refused_for_good_is_dropped_and_the_next_ones_flow(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path, hs_proxy: HomeserverProxy,  # noqa: F811
) -> None:
    _, human, room, bot = await talking_bot(synapse, app_factory, humans, tmp_path,
                                            homeserver=hs_proxy.url)
    await echoed(human, room, bot, "one", 0)
    hs_proxy.fail, hs_proxy.fail_status = re.compile(r"^PUT .*/rooms/[^/]+/send/"), 403
    hs_proxy.fail_times = 1
    await human.send(room, "two")
    await hs_proxy.wait_failures(1)
    await echoed(human, room, bot, "three", 1)
    await human.sync()
    assert [m.body for m in human.messages_from(room, bot.user_id)] == [
        "echo: one", "echo: three"]


@pytest.mark.matrix
async def test_a_message_the_disk_refuses_is_read_again_once_it_can_be_stored(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    app, human, room, bot = await talking_bot(synapse, app_factory, humans, tmp_path)
    await echoed(human, room, bot, "one", 0)

    await app.db.conn.execute("PRAGMA query_only = ON")  # every write to conversation.db fails
    await human.send(room, "two")
    notice = await human.next_message(room, bot.user_id, 1)
    assert notice.body == matrix_interface.NOT_STORED_NOTICE
    # Read again at least once (the sync loop's backoff: 0.5 s, then 1 s ...), still refused.
    await eventually(lambda: sum("matrix: could not store a message" in r.getMessage()
                                 for r in caplog.records) >= 2, 10)
    assert len(fake_llm.requests) == 1

    await app.db.conn.execute("PRAGMA query_only = OFF")  # the fault clears
    assert (await human.next_message(room, bot.user_id, 2)).body == "echo: two"
    await echoed(human, room, bot, "three", 3)
    # Told once, answered once each.
    assert [m.body for m in human.messages_from(room, bot.user_id)] == [
        "echo: one", matrix_interface.NOT_STORED_NOTICE, "echo: two", "echo: three"]
    assert [last_user_text(r) for r in fake_llm.requests] == ["one", "two", "three"]


@pytest.mark.matrix
async def test_a_reply_the_homeserver_refuses_is_sent_again_by_itself(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path, hs_proxy: HomeserverProxy,  # noqa: F811
) -> None:
    """Sends fail (502) while syncs still work: no reconnect happens to re-send the reply."""
    _, human, room, bot = await talking_bot(synapse, app_factory, humans, tmp_path,
                                            homeserver=hs_proxy.url)
    await echoed(human, room, bot, "one", 0)

    hs_proxy.fail = re.compile(r"^PUT .*/rooms/[^/]+/send/")
    await human.send(room, "two")
    await hs_proxy.wait_failures(3)  # the first attempt and two retries
    hs_proxy.fail = None
    assert (await human.next_message(room, bot.user_id, 1)).body == "echo: two"
    await echoed(human, room, bot, "three", 2)
    assert [m.body for m in human.messages_from(room, bot.user_id)] == [
        "echo: one", "echo: two", "echo: three"]


@pytest.mark.matrix
async def test_a_typing_notice_shows_while_a_slow_turn_runs(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    await start_bot(app_factory, synapse, bot, [person.user_id], tmp_path / "store")
    human = await humans(person)
    room = await joined_room(human, bot)
    fake_llm.script(Reply(text="done thinking", delay=1.5))
    await human.send(room, "think hard")
    await human.until(lambda: any(r == room and bot.user_id in users
                                  for r, users in human.typing))
    assert (await human.next_message(room, bot.user_id, 0)).body == "done thinking"
    # ... and it is cleared once the turn is over.
    await human.until(lambda: human.typing[-1][0] == room
                      and bot.user_id not in human.typing[-1][1])
    # A quick turn costs no typing request at all.
    seen = len(human.typing)
    await human.send(room, "quick")
    await human.next_message(room, bot.user_id, 1)
    await human.send(room, "quick again")
    await human.next_message(room, bot.user_id, 2)
    assert len(human.typing) == seen


@pytest.mark.matrix
async def test_an_empty_store_on_a_used_device_is_refused(
    synapse: Synapse, app_factory: AppFactory, tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    app = await start_bot(app_factory, synapse, bot, [person.user_id], tmp_path / "store")
    await app.stop()  # the device has published its keys
    with pytest.raises(StartupError) as caught:
        await app_factory(matrix_section(synapse, bot, [person.user_id],
                                         tmp_path / "another-store"))
    message = str(caught.value)
    assert "ganglion login" in message and bot.device_id in message
    assert "already has encryption keys" in message


@pytest.mark.matrix
async def test_a_dead_token_or_a_wrong_homeserver_stop_start_up_with_what_to_do(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM, tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    with pytest.raises(StartupError, match="did not answer like a Matrix homeserver"):
        await app_factory(merge(
            matrix_section(synapse, bot, [person.user_id], tmp_path / "store"),
            {"matrix": {"homeserver": f"http://127.0.0.1:{fake_llm.port}"}}))
    signed_out = AsyncClient(synapse.url, bot.user_id)
    signed_out.restore_login(bot.user_id, bot.device_id, bot.access_token)
    await signed_out.logout()  # as "sign out this session" in Element does
    await signed_out.close()
    with pytest.raises(StartupError) as caught:
        await app_factory(matrix_section(synapse, bot, [person.user_id], tmp_path / "store"))
    assert "M_UNKNOWN_TOKEN" in str(caught.value) and "ganglion login" in str(caught.value)


@pytest.mark.matrix
async def test_a_token_of_another_user_or_device_stops_start_up(
    synapse: Synapse, app_factory: AppFactory, tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    section = matrix_section(synapse, bot, [person.user_id], tmp_path / "store")
    with pytest.raises(StartupError) as caught:
        await app_factory(merge(section, {"matrix": {"device_id": "NOTTHISONE"}}))
    assert (f"matrix.device_id is NOTTHISONE but the access token belongs to device "
            f"{bot.device_id}") in str(caught.value)
    with pytest.raises(StartupError) as caught:
        await app_factory(merge(section, {"matrix": {"user_id": person.user_id}}))
    assert f"the access token belongs to {bot.user_id}" in str(caught.value)
    assert "ganglion login" in str(caught.value)


@pytest.mark.matrix
async def test_commands_work_in_a_room_with_bang_and_slash(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    app = await start_bot(app_factory, synapse, bot, [person.user_id], tmp_path / "store")
    human = await humans(person)
    room = await joined_room(human, bot)
    await human.send(room, "remember the number 7")
    await human.next_message(room, bot.user_id, 0)

    await human.send(room, "!help")
    help_reply = await human.next_message(room, bot.user_id, 1)
    assert type(help_reply).__name__ == "RoomMessageNotice"  # an m.notice, not an answer
    assert "/new" in help_reply.body and "<code>/new</code>" in help_reply.formatted_body
    await human.send(room, "/help")
    assert "/new" in (await human.next_message(room, bot.user_id, 2)).body
    await human.send(room, "!new")
    assert "fresh conversation" in (await human.next_message(room, bot.user_id, 3)).body
    assert len(fake_llm.requests) == 1  # commands never reach the model
    await human.send(room, "what number?")
    reply = await human.next_message(room, bot.user_id, 4)
    assert user_texts(fake_llm.requests[-1]) == ["what number?"]

    # Redaction (for messages holding a secret): its own messages yes, the human's only with
    # the power to (which a bot invited to someone's room does not have).
    assert app.matrix is not None
    assert await app.matrix.redact(ThreadId(room), reply.event_id, "test") == ""
    their = human.messages_from(room, person.user_id)[0].event_id
    assert "lack the power" in await app.matrix.redact(ThreadId(room), their, "test")


@pytest.mark.matrix
async def test_an_undecryptable_message_is_reported_once(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    app = await start_bot(app_factory, synapse, bot, [person.user_id], tmp_path / "store")
    assert app.matrix is not None
    app.matrix.keys.grace = 0.3
    human = await humans(person)
    room = await joined_room(human, bot)
    bot_device = await human.until(
        lambda: human.client.device_store[bot.user_id].get(bot.device_id))
    human.client.blacklist_device(bot_device)  # the bot gets no room key: it cannot read
    await human.send(room, "secret one")
    await human.send(room, "secret two")
    notice = await human.next_message(room, bot.user_id, 0)
    assert "could not read a message" in notice.body
    session = human.client.olm.outbound_group_sessions[room].id
    # The key was asked of the sender's devices, and the event logged.
    requests = await human.until(lambda: [
        e for e in human.to_device if isinstance(e, RoomKeyRequest)
        and e.session_id == session and e.requesting_device_id == bot.device_id])
    assert requests[0].sender == bot.user_id and requests[0].room_id == room
    assert any("cannot decrypt event" in r.getMessage() and session in r.getMessage()
               for r in caplog.records)
    human.client.unblacklist_device(bot_device)  # a new room key, shared with the bot
    await echoed(human, room, bot, "readable", 1)
    assert len(human.messages_from(room, bot.user_id)) == 2  # told once, not per message
    assert [last_user_text(r) for r in fake_llm.requests] == ["readable"]


@pytest.mark.matrix
async def test_a_room_with_an_unreadable_message_is_told_before_the_bot_stops(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    """Events waiting for a key live in memory only: a stop within the grace would lose
    them silently, so the room is told at the stop."""
    app, human, room, bot = await talking_bot(synapse, app_factory, humans, tmp_path)
    matrix = app.matrix
    assert matrix is not None
    matrix.keys.grace = 600
    device = await human.until(lambda: human.client.device_store[bot.user_id].get(bot.device_id))
    human.client.blacklist_device(device)
    await human.send(room, "unreadable")
    await eventually(lambda: bool(matrix.keys), 20)  # it holds the event, waiting for its key
    await app.stop()
    notice = await human.next_message(room, bot.user_id, 0)
    assert "could not read a message" in notice.body


async def send_room_key_late(human: Human, bot: MatrixUser, room: str, key: str,
                             session_id: str) -> None:
    """As a client whose room key reaches a device only after the message: an ``m.room_key``
    over a fresh Olm session, sent by hand (nio keeps this step internal)."""
    device = human.client.device_store[bot.user_id][bot.device_id]
    await human.client.keys_claim({bot.user_id: [bot.device_id]})
    olm = human.client.olm
    session = olm.session_store.get(device.curve25519)
    content = {"algorithm": "m.megolm.v1.aes-sha2", "room_id": room,
               "session_id": session_id, "session_key": key}
    encrypted = olm._olm_encrypt(session, device, "m.room_key", content)
    resp = await human.client.to_device(
        ToDeviceMessage("m.room.encrypted", bot.user_id, bot.device_id, encrypted))
    assert isinstance(resp, ToDeviceResponse), resp


@pytest.mark.matrix
async def test_a_message_whose_key_comes_late_is_answered_once_it_does(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="ganglion.interfaces.matrix.keys")
    app, human, room, bot = await talking_bot(synapse, app_factory, humans, tmp_path)
    matrix = app.matrix
    assert matrix is not None
    matrix.keys.grace = 60  # the key comes before the room would be told
    device = await human.until(lambda: human.client.device_store[bot.user_id].get(bot.device_id))
    human.client.blacklist_device(device)  # the room key is not sent with the message...
    human.client.olm.create_outbound_group_session(room)
    session = human.client.olm.outbound_group_sessions[room]
    key, session_id = session.session_key, session.id  # (from its first message on)
    await human.send(room, "read me late")
    # The bot has the event and waits for its key.
    await eventually(lambda: bool(matrix.keys), 20)
    assert fake_llm.requests == []

    await send_room_key_late(human, bot, room, key, session_id)  # ...but after it
    assert (await human.next_message(room, bot.user_id, 0)).body == "echo: read me late"
    assert any("decrypted after its key arrived" in r.getMessage() for r in caplog.records)
    assert not matrix.keys
    assert [last_user_text(r) for r in fake_llm.requests] == ["read me late"]


@pytest.mark.matrix
async def test_login_writes_a_working_config(
    synapse: Synapse, fake_llm: FakeLLM, humans: HumanFactory, tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    config_path = tmp_path / "config.yaml"
    config_path.write_text(
        "# my assistant\n"
        "llm:\n"
        f"  endpoints: [{{name: fake, base_url: '{fake_llm.base_url}', api_key: {LLM_KEY}}}]\n"
        "  model: fake-model\n"
        "web:\n  port: 0\n  token: test-web-token-5a1f0c9e7d\n"
        "matrix:\n"
        "  enabled: true                   # on\n"
        f"  homeserver: {synapse.url}\n"
        "  user_id: \"@nobody:example.org\"\n"
        "  access_token: old-token        # replaced by login\n"
        f"  allowed_users: [\"{person.user_id}\"]\n"
        "  store_path: data/matrix-store\n"
        "logging:\n  level: INFO\n")
    (tmp_path / "pw").write_text(bot.password + "\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANGLION_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ganglion", "--config", str(config_path), "login",
        "--homeserver", synapse.url, "--user", bot.localpart, "--password-file",
        str(tmp_path / "pw"), "--device-name", "Ganglion test",
        cwd=tmp_path, env=env, stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out_bytes, _ = await asyncio.wait_for(proc.communicate(), 60)
    out = out_bytes.decode()
    assert proc.returncode == 0, out
    assert bot.password not in out

    text = config_path.read_text()
    raw = yaml.safe_load(text)["matrix"]
    assert raw["user_id"] == bot.user_id and raw["homeserver"] == synapse.url
    assert raw["device_id"] and raw["device_id"] != bot.device_id  # a NEW device
    assert raw["access_token"] not in ("old-token", bot.access_token)
    assert raw["access_token"] not in out  # written, so never printed
    assert "# my assistant" in text and "# on" in text  # the rest of the file is intact
    assert oct(config_path.stat().st_mode & 0o777) == "0o600"
    store = tmp_path / "data" / "matrix-store"
    assert store.is_dir() and not any(store.iterdir())

    app = App(load_config(str(config_path), env={}))
    await app.start()
    try:
        assert app.matrix is not None
        await asyncio.wait_for(app.matrix.ready.wait(), 20)
        human = await humans(person)
        room = await human.create_room(invite=[bot.user_id])
        await human.wait_joined(room, bot.user_id)
        await human.send(room, "are you there?")
        reply = await human.next_message(room, bot.user_id, 0)
        assert reply.decrypted and reply.body == "echo: are you there?"
    finally:
        await app.stop()


@pytest.mark.matrix
async def test_login_asks_for_what_the_flags_leave_out(
    synapse: Synapse, tmp_path: Path,
) -> None:
    bot = await synapse.register("bot")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANGLION_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "ganglion", "login", cwd=tmp_path, env=env,
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    answers = f"{synapse.url}\n{bot.localpart}\n{bot.password}\n".encode()
    out_bytes, _ = await asyncio.wait_for(proc.communicate(answers), 60)
    out = out_bytes.decode()
    assert proc.returncode == 0, out
    assert "Homeserver [" in out and "Bot account [" in out  # it asked
    assert bot.password not in out
    raw = yaml.safe_load((tmp_path / "config.yaml").read_text())["matrix"]
    assert raw["user_id"] == bot.user_id and raw["homeserver"] == synapse.url
    assert raw["device_id"] and raw["device_id"] != bot.device_id
    assert (tmp_path / "data" / "matrix-store").is_dir()


def test_token_placeholders_are_printed_not_written(tmp_path: Path) -> None:
    from ganglion.interfaces.matrix.login import update_config_text

    text = ("matrix:\n  enabled: true\n  access_token: ${GANGLION_MATRIX_TOKEN}\n"
            "  device_id: \"\"\n")
    new_text, printed = update_config_text(text, {
        "homeserver": "https://m.example.org", "user_id": "@bot:example.org",
        "access_token": "syt_secret", "device_id": "NEWDEVICE"})
    data = yaml.safe_load(new_text)["matrix"]
    assert data["access_token"] == "${GANGLION_MATRIX_TOKEN}"
    assert data["device_id"] == "NEWDEVICE" and data["user_id"] == "@bot:example.org"
    assert printed == {"access_token": "GANGLION_MATRIX_TOKEN"}
    # No matrix section yet: one is added at the end.
    new_text, printed = update_config_text("web:\n  port: 8080\n", {
        "homeserver": "https://m.example.org", "user_id": "@bot:example.org",
        "access_token": "syt_secret", "device_id": "NEWDEVICE"})
    assert yaml.safe_load(new_text)["matrix"]["access_token"] == "syt_secret"
    assert yaml.safe_load(new_text)["web"] == {"port": 8080} and printed == {}


@pytest.mark.parametrize(
    ("matrix", "expected"),
    [
        ({"device_id": ""}, "matrix.device_id is required"),
        ({"access_token": ""}, "matrix.access_token is required"),
        ({"allowed_users": []}, "never answers everyone by accident"),
        ({"allowed_users": ["bob"]}, "matrix.allowed_users.0: not a Matrix user id"),
        ({"trusted_users": ["@t:example.org"]}, "matrix.trusted_users: @t:example.org"),
        ({"homeserver": "matrix.example.org"}, "matrix.homeserver: not an http(s) URL"),
    ],
)
def test_matrix_config_errors_say_what_to_do(matrix: dict[str, Any], expected: str) -> None:
    from ganglion.config import parse_config
    from ganglion.errors import ConfigError

    good = {"enabled": True, "homeserver": "https://matrix.example.org",
            "user_id": "@bot:example.org", "access_token": "syt_abcdef",
            "device_id": "ABCDEFGHIJ", "allowed_users": ["@you:example.org"]}
    parse_config({"matrix": good}, env={})
    with pytest.raises(ConfigError) as caught:
        parse_config({"matrix": {**good, **matrix}}, env={})
    assert expected in str(caught.value)
    if "device_id" in expected:
        assert "ganglion login" in str(caught.value)


def test_the_token_is_masked_and_nio_is_not_imported_without_matrix() -> None:
    from ganglion.config import masked_dump, parse_config, secret_values

    cfg = parse_config({"matrix": {"access_token": "syt_very_secret"}}, env={})
    assert "syt_very_secret" in secret_values(cfg)
    assert masked_dump(cfg)["matrix"]["access_token"] == "***"
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, ganglion.app, ganglion.cli; "
         "sys.exit('nio' in sys.modules)"], capture_output=True, text=True, check=False)
    assert probe.returncode == 0, probe.stderr


@pytest.mark.matrix
async def test_the_daemon_survives_a_crash_stops_fast_and_never_logs_the_token(
    synapse: Synapse, fake_llm: FakeLLM, humans: HumanFactory, tmp_path: Path,
) -> None:
    bot, person = await synapse.register("bot"), await synapse.register("human")
    config = daemon_config(
        fake_llm, logging={"level": "DEBUG"},
        **matrix_section(synapse, bot, [person.user_id], Path("data/matrix-store")))
    daemon = Daemon(tmp_path, config)
    daemon.start()
    try:
        await daemon.wait_ready()
        human = await humans(person)
        room = await human.create_room(invite=[bot.user_id])
        await human.wait_joined(room, bot.user_id)
        await echoed(human, room, bot, "ping", 0)
        # A crash: the saved sync token may be older than the last sync; what the bot sees
        # again is deduplicated, so nothing is answered twice.
        daemon.kill()
        await human.send(room, "pong")
        daemon.start()
        await daemon.wait_ready()
        assert (await human.next_message(room, bot.user_id, 1)).body == "echo: pong"
        await echoed(human, room, bot, "again", 2)
        assert [m.body for m in human.messages_from(room, bot.user_id)] == [
            "echo: ping", "echo: pong", "echo: again"]
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        assert await daemon.wait_exit(5) == 0
        assert time.monotonic() - started < 5
    finally:
        daemon.kill()
    log = (tmp_path / "logs" / "ganglion.log").read_text()
    assert "matrix: syncing with" in log and "reply sent" in log
    assert bot.access_token not in log and bot.access_token not in daemon.text()
    assert (tmp_path / "data" / "matrix-store").is_dir()


@pytest.mark.matrix
async def test_add_endpoint_only_in_an_encrypted_room_and_the_key_is_redacted(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    # Every line of ours, debug included (libraries stay at INFO, as the daemon sets them).
    caplog.set_level(logging.DEBUG, logger="ganglion")
    caplog.set_level(logging.INFO, logger="nio")
    bot, person = await synapse.register("bot"), await synapse.register("owner")
    app = await start_bot(app_factory, synapse, bot, [person.user_id], tmp_path / "store",
                          owner=person.user_id)
    human = await humans(person)
    key = "sk-matrix-endpoint-key-4f1e2d"
    command = f"!add_endpoint extra {fake_llm.base_url} {key}"

    plain = await human.create_room(invite=[bot.user_id], encrypted=False)
    await human.wait_joined(plain, bot.user_id)
    await human.send(plain, command)
    refused = await human.next_message(plain, bot.user_id, 0)
    assert "encrypted room" in refused.body and key not in refused.body
    assert app.endpoints.get("extra") is None

    # An encrypted room where the bot may redact (power level 50, the default for redactions).
    resp = await human.client.room_create(
        invite=[bot.user_id],
        initial_state=[{"type": "m.room.encryption", "state_key": "",
                        "content": {"algorithm": "m.megolm.v1.aes-sha2"}}],
        power_level_override={"users": {bot.user_id: 50}},  # room v12: creators are implicit
    )
    assert hasattr(resp, "room_id"), resp
    room: str = resp.room_id
    await human.until(lambda: room in human.client.rooms)
    await human.wait_joined(room, bot.user_id)
    event_id = await human.send(room, command)
    reply = await human.next_message(room, bot.user_id, 0)
    assert key not in reply.body and "extra" in reply.body
    assert app.endpoints.get("extra") is not None

    async def redacted() -> bool:
        got = await human.client.room_get_event(room, event_id)
        event = getattr(got, "event", None)
        return type(event).__name__ == "RedactedEvent"

    await eventually_async(redacted, 15)  # the command message is redacted
    assert key not in caplog.text
