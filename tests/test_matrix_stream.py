"""Streaming answers, read receipts and the ack reaction, against a real Synapse with E2EE.

The person's client (tests/synapse.py's ``Human``) reads the raw events, so each test sees
both what an edit-aware client shows (the early post replaced by its edits' ``m.new_content``)
and what a plain one does (every event as it is, the final edit's fallback ``body``).
"""

from __future__ import annotations

import asyncio
import itertools
import re
from pathlib import Path
from typing import Any

import pytest
from conftest import AppFactory, eventually
from fake_llm import FakeLLM, Reply
from hs_proxy import HomeserverProxy, hs_proxy  # noqa: F401  (fixture)
from matrix_rooms import (
    in_thread,
    joined_room,
    relation,
    send_content,
    start_bot,
    talking_bot,
)
from nio import ReactionEvent, RedactionEvent
from synapse import Human, HumanFactory, MatrixUser, Synapse

from ganglion.interfaces.matrix.stream import EARLY_FILE, IN_PROGRESS

INTERVAL = 0.3
WORDS = [f"word{i}" for i in range(60)]
ANSWER = "Here is **a long** answer: " + " ".join(WORDS)


def edit_of(event: Any) -> str | None:
    """The event id ``event`` replaces, if it is an edit."""
    relates = event.source["content"].get("m.relates_to") or {}
    return relates.get("event_id") if relates.get("rel_type") == "m.replace" else None


def bot_messages(human: Human, room: str, bot: MatrixUser) -> list[Any]:
    return human.messages_from(room, bot.user_id)


def originals(human: Human, room: str, bot: MatrixUser) -> list[Any]:
    return [e for e in bot_messages(human, room, bot) if edit_of(e) is None]


async def final_edit(human: Human, room: str, bot: MatrixUser, text: str) -> Any:
    """The bot's edit whose new content is ``text``, once it arrived."""
    def found() -> Any:
        return next((e for e in bot_messages(human, room, bot) if edit_of(e)
                     and e.source["content"]["m.new_content"]["body"] == text), None)
    return await human.until(found)


@pytest.mark.matrix
async def test_a_slow_answer_is_posted_early_and_edited_at_most_once_per_interval(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    _app, human, room, bot = await talking_bot(synapse, app_factory, humans, tmp_path,
                                               edit_interval_seconds=INTERVAL)
    more, rest = asyncio.Event(), asyncio.Event()
    # The model writes 9 words, waits, 30 more at once, waits, then the last ones slowly.
    fake_llm.script(Reply(text=ANSWER, held_before_chunks={10: more, 40: rest},
                          chunk_delay=0.02))
    await human.send(room, "tell me a lot")

    early = await human.next_message(room, bot.user_id, 0)
    assert early.decrypted and edit_of(early) is None
    assert early.body.endswith(IN_PROGRESS) and ANSWER.startswith(early.body[:-2])
    more.set()
    await human.until(lambda: len(bot_messages(human, room, bot)) > 1)
    rest.set()
    final = await final_edit(human, room, bot, ANSWER)

    events = bot_messages(human, room, bot)
    assert originals(human, room, bot) == [early]  # one message; everything else edits it
    assert all(edit_of(e) == early.event_id for e in events[1:])
    assert events[-1] is final
    in_progress = events[1:-1]
    assert in_progress and all(e.body.endswith(IN_PROGRESS) for e in in_progress)
    assert all(e.decrypted for e in events)  # edits are encrypted like any message
    # The rate limit, by the homeserver's clock: an edit is sent an interval after the
    # previous post or edit was taken (the final is the outbox's and does not wait).
    stamps = [e.server_timestamp for e in events[:-1]]
    assert all(b - a >= INTERVAL * 1000 - 1 for a, b in itertools.pairwise(stamps))
    # An edit-aware client shows the whole answer, formatted...
    new = final.source["content"]["m.new_content"]
    assert new["body"] == ANSWER
    assert "<strong>a long</strong>" in new["formatted_body"]
    assert new["m.mentions"] == {}
    # ... and one that ignores edits shows every event as a message: the last one holds the
    # whole final text after the "* " the spec gives a fallback.
    assert final.body == "* " + ANSWER
    assert final.formatted_body.startswith("* ")
    assert "<strong>a long</strong>" in final.formatted_body


@pytest.mark.matrix
@pytest.mark.parametrize("early_file", ["kept", "lost"])
async def test_a_restart_mid_stream_finishes_the_early_post_instead_of_a_second_answer(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path, early_file: str,
) -> None:
    """The early post is known after a restart from the store folder's file ("kept"), or, if
    the daemon died before writing it ("lost"), from the homeserver: the rerun's early post
    has the same transaction id, so it gets the same event back."""
    bot, person = await synapse.register("bot"), await synapse.register("human")
    store = tmp_path / "store"
    first = await start_bot(app_factory, synapse, bot, [person.user_id], store,
                            edit_interval_seconds=INTERVAL)
    human = await humans(person)
    room = await joined_room(human, bot)
    fake_llm.script(Reply(text=ANSWER, held_before_chunks={10: asyncio.Event()}))
    await human.send(room, "tell me a lot")
    early = await human.next_message(room, bot.user_id, 0)
    assert early.body.endswith(IN_PROGRESS)
    assert (store / EARLY_FILE).exists()
    await first.stop()  # mid-stream: the message stays unanswered and runs again
    if early_file == "lost":
        (store / EARLY_FILE).unlink()
        fake_llm.script(Reply(text=ANSWER, chunk_delay=0.02))  # long enough to post early
    else:
        fake_llm.script(Reply(text=ANSWER))

    await start_bot(app_factory, synapse, bot, [person.user_id], store,
                    edit_interval_seconds=INTERVAL)
    final = await final_edit(human, room, bot, ANSWER)
    assert edit_of(final) == early.event_id
    assert originals(human, room, bot) == [early]  # no second answer
    assert all(edit_of(e) == early.event_id for e in bot_messages(human, room, bot)[1:])
    assert len(fake_llm.requests) == 2
    # Delivered: the early post is forgotten.
    await eventually(lambda: early.event_id not in (store / EARLY_FILE).read_text())


@pytest.mark.matrix
async def test_a_quick_answer_is_one_message_and_streaming_can_be_switched_off(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    _app, human, room, bot = await talking_bot(synapse, app_factory, humans, tmp_path,
                                               streaming=False, edit_interval_seconds=INTERVAL)
    fake_llm.script(Reply(text=ANSWER, chunk_delay=0.02))  # streams for over a second
    await human.send(room, "tell me a lot")
    answer = await human.next_message(room, bot.user_id, 0)
    assert answer.body == ANSWER and edit_of(answer) is None
    await human.send(room, "and now?")  # its echo comes after anything the first caused
    assert (await human.next_message(room, bot.user_id, 1)).body == "echo: and now?"
    assert len(bot_messages(human, room, bot)) == 2


@pytest.mark.matrix
async def test_an_accepted_message_is_marked_read_and_acknowledged_until_answered(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    _app, human, room, bot = await talking_bot(synapse, app_factory, humans, tmp_path,
                                               ack_reaction="👀")
    quick = await human.send(room, "hi")  # answered at once: the answer says it was read
    assert (await human.next_message(room, bot.user_id, 0)).body == "echo: hi"
    answer_now = asyncio.Event()
    fake_llm.script(Reply(text="there you go", held=answer_now))
    question = await human.send(room, "please look")

    def reaction(to: str) -> Any:
        return next((e for r, e in human.events if r == room and isinstance(e, ReactionEvent)
                     and e.sender == bot.user_id and e.reacts_to == to), None)
    ack = await human.until(lambda: reaction(question))
    assert ack.key == "👀"
    await human.until(lambda: (room, question, bot.user_id) in human.receipts)
    # The quick one's would have come first (it was accepted first, its wait ended first).
    assert (room, quick, bot.user_id) not in human.receipts and not reaction(quick)
    answer_now.set()
    assert (await human.next_message(room, bot.user_id, 1)).body == "there you go"
    await human.until(lambda: any(
        r == room and isinstance(e, RedactionEvent) and e.redacts == ack.event_id
        for r, e in human.events))


@pytest.mark.matrix
async def test_a_homeserver_refusing_sends_mid_stream_still_gets_one_answer(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path, hs_proxy: HomeserverProxy,  # noqa: F811
) -> None:
    """Edits are best effort and skipped while sends fail; the final waits in the outbox and
    then edits the early post, so the room still holds one answer."""
    _app, human, room, bot = await talking_bot(synapse, app_factory, humans, tmp_path,
                                               homeserver=hs_proxy.url,
                                               edit_interval_seconds=INTERVAL)
    rest = asyncio.Event()
    fake_llm.script(Reply(text=ANSWER, held_before_chunks={10: rest}))
    await human.send(room, "tell me a lot")
    early = await human.next_message(room, bot.user_id, 0)
    hs_proxy.fail = re.compile(r"^PUT .*/rooms/[^/]+/send/")
    rest.set()
    await hs_proxy.wait_failures(2)  # the final's first try, and a retry
    hs_proxy.fail = None
    final = await final_edit(human, room, bot, ANSWER)
    assert edit_of(final) == early.event_id
    assert originals(human, room, bot) == [early]


@pytest.mark.matrix
async def test_a_long_streamed_answer_still_splits_the_edit_holding_its_first_part(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    """An edit holds its text twice (new content and fallback), so its part is smaller than a
    plain message's; the homeserver takes every event (encrypted, under its 64 KiB)."""
    _app, human, room, bot = await talking_bot(synapse, app_factory, humans, tmp_path,
                                               edit_interval_seconds=INTERVAL)
    lines = [f"Line {i}: " + " ".join(f"w{i}x{j}" for j in range(12)) for i in range(600)]
    long_answer = "\n".join(lines)  # about 55,000 characters
    rest = asyncio.Event()
    fake_llm.script(Reply(text=long_answer, held_before_chunks={10: rest}))
    await human.send(room, "write a book")
    early = await human.next_message(room, bot.user_id, 0)
    rest.set()
    last_line = lines[-1]
    await human.until(lambda: any(last_line in m.body
                                  for m in bot_messages(human, room, bot)[1:]))
    events = bot_messages(human, room, bot)
    edits = [e for e in events if edit_of(e) == early.event_id]
    parts = [e for e in events[1:] if edit_of(e) is None]
    final = edits[-1].source["content"]["m.new_content"]
    assert final["body"] + "".join(p.body for p in parts) == long_answer
    assert len(parts) >= 2 and all(e.decrypted for e in events)
    assert edits[-1].body == "* " + final["body"]  # what a client without edits shows


@pytest.mark.matrix
async def test_what_the_model_said_before_a_tool_call_is_replaced_by_its_answer(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    """The model streams a preamble, calls a tool, then answers: one early post, finished
    with the answer; the tool's notice is a message of its own."""
    _app, human, room, bot = await talking_bot(synapse, app_factory, humans, tmp_path,
                                               show_tool_calls=True,
                                               edit_interval_seconds=INTERVAL)
    call_now = asyncio.Event()
    preamble = "Let me look at your folder first, it will take a moment to list."
    fake_llm.script(Reply(text=preamble, tool_calls=[("list_dir", {})],
                          held_before_chunks={8: call_now}),
                    Reply(text=ANSWER))
    await human.send(room, "what is in my folder?")
    early = await human.next_message(room, bot.user_id, 0)
    assert early.body.endswith(IN_PROGRESS) and preamble.startswith(early.body[:-2])
    call_now.set()
    final = await final_edit(human, room, bot, ANSWER)
    assert edit_of(final) == early.event_id
    notices = [e for e in originals(human, room, bot) if e is not early]
    assert len(notices) == 1 and notices[0].body.startswith("Tool list_dir · ok")


@pytest.mark.matrix
async def test_a_streamed_answer_in_a_thread_stays_in_the_thread(
    synapse: Synapse, app_factory: AppFactory, fake_llm: FakeLLM,
    humans: HumanFactory, tmp_path: Path,
) -> None:
    # The early post carries the thread relation (the edits carry only m.replace).
    _app, human, room, bot = await talking_bot(synapse, app_factory, humans, tmp_path,
                                               edit_interval_seconds=INTERVAL)
    root = await human.send(room, "a thread starts here")
    await human.next_message(room, bot.user_id, 0)
    more = asyncio.Event()
    fake_llm.script(Reply(text=ANSWER, held_before_chunks={10: more}, chunk_delay=0.02))
    asked = await send_content(human, room, in_thread(root, "tell me a lot"))
    early = await human.next_message(room, bot.user_id, 1)
    assert early.body.endswith(IN_PROGRESS)
    assert relation(early) == {"rel_type": "m.thread", "event_id": root,
                               "is_falling_back": True, "m.in_reply_to": {"event_id": asked}}
    more.set()
    final = await final_edit(human, room, bot, ANSWER)
    assert relation(final) == {"rel_type": "m.replace", "event_id": early.event_id}
    assert "m.relates_to" not in final.source["content"]["m.new_content"]
