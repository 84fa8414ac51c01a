"""Dependencies failing, end to end through the WebSocket: a clear message, still running, and
working again by itself once the fault clears.

Already covered elsewhere and not repeated here: the LLM endpoint refusing connections
(tests/test_turns.py::test_all_endpoints_failing_gives_a_clear_message_and_recovers, and
the real daemon with nothing listening in tests/test_daemon.py), and the homeserver going
away and coming back (tests/test_matrix.py::test_recovers_by_itself_when_the_homeserver_
comes_back). The model client's retry and failover rules for each failure are unit-tested
in tests/test_llm_client.py; here the user's side of the same failures is checked.

Valid JSON of the wrong shape from the model (streamed, or as a whole body from a server that
ignores ``stream``) is a failure of that endpoint: failover, then a clear message, never an
empty answer.

The disk refusing writes, simulated: ``PRAGMA query_only`` on the daemon's own connection makes
SQLite refuse every write with the error a read-only file gives (SQLITE_READONLY), through the
real error paths of the web interface and the worker. A real full disk (a tmpfs in a private
mount namespace) and a real read-only data folder are in tests/test_disk_faults.py; a
read-only remount under the running daemon is refused by Linux (busy: SQLite's files are open
for writing), which is why the read-only error mid-run is simulated here.

A read that fails (a disk error under the reminder schedule) cannot be caused for real in WAL
mode, where readers never wait for a lock; a store whose reads raise once stands in for it.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from conftest import LLM_KEY, AppFactory, connect, eventually
from fake_llm import FakeLLM, Reply, completion_json
from wsclient import ChatClient

from ganglion.messages import ThreadId
from ganglion.storage.reminders import NewReminder, Reminder, ReminderStore


def one_endpoint(llm: FakeLLM, timeout: float = 10, retries: int = 1) -> dict[str, Any]:
    return {"llm": {"endpoints": [{"name": "fake", "base_url": llm.base_url, "api_key": LLM_KEY,
                                   "timeout_seconds": timeout}],
                    "retries": retries}}


async def assert_recovers(chat: ChatClient) -> None:
    """The fault is gone: the next message is answered normally."""
    assert (await chat.ask("and now?", timeout=10))["text"] == "echo: and now?"


async def test_a_model_hanging_past_its_time_out_is_reported_and_the_next_turn_works(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(one_endpoint(fake_llm, timeout=0.5, retries=0))
    fake_llm.script(Reply(hang=True))
    chat = await connect(app)
    reply = await chat.ask("are you there?", timeout=10)
    assert reply["role"] == "system"
    assert "language model" in reply["text"] and "timed out" in reply["text"]
    assert "timeout_seconds" in reply["text"]  # what to do about it
    await assert_recovers(chat)
    await chat.close()


async def test_garbage_from_the_model_is_reported_and_the_next_turn_works(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(one_endpoint(fake_llm))
    fake_llm.script(Reply(garbage=True))  # not retried: another try would not help
    chat = await connect(app)
    reply = await chat.ask("hello", timeout=10)
    assert reply["role"] == "system"
    assert "not a chat completion" in reply["text"] and "base_url" in reply["text"]
    await assert_recovers(chat)
    await chat.close()


WRONG_STREAMS = {
    "a choice without delta": (['{"choices": [{"foo": 1}]}'], "no choice with a delta"),
    "a delta that is a list": (['{"choices": [{"delta": ["hi"]}]}'],
                               "delta is not a JSON object"),
    "content that is a number": (['{"choices": [{"index": 0, "delta": {"content": 5}}]}'],
                                 "text is not a string"),
    "no choices": (['{"id": "x", "object": "chat.completion.chunk"}'], "no list of choices"),
    "a chunk that is a list": (["[1, 2]"], "not a JSON object"),
    "tool_calls that is a number": (['{"choices": [{"delta": {"tool_calls": 5}}]}'],
                                    "tool_calls is not a list"),
    "a tool call without a name": (
        ['{"choices": [{"delta": {"tool_calls": [{"index": 0, "function": '
         '{"arguments": "{}"}}]}}]}'], "no function name"),
    "nothing but empty choices": (['{"choices": []}', '{"choices": []}'],
                                  "no choice with a delta"),
    "text, then a broken chunk": (['{"choices": [{"delta": {"content": "half an "}}]}',
                                   '{"choices": [{"delta": {"content": ["answer"]}}]}'],
                                  "text is not a string"),
}
WRONG_BODIES = {
    "a list": ("[1, 2]", "not a JSON object"),
    "null": ("null", "not a JSON object"),
    "no choices": ('{"object": "chat.completion"}', "no list of choices"),
    "a choice without message": ('{"choices": [{"foo": 1}]}', "no message object"),
    "content that is a number": ('{"choices": [{"message": {"content": 5}}]}',
                                 "text is not a string"),
}
"""Valid JSON of the wrong shape, streamed and as a whole body (a server ignoring "stream")."""


def wrong_shape(case: str) -> tuple[Reply, str]:
    if case in WRONG_STREAMS:
        chunks, why = WRONG_STREAMS[case]
        return Reply(raw_chunks=chunks), why
    body, why = WRONG_BODIES[case.removeprefix("body: ")]
    return Reply(raw_body=body), why


SHAPES = [*WRONG_STREAMS, *(f"body: {c}" for c in WRONG_BODIES)]


@pytest.mark.parametrize("case", SHAPES)
async def test_json_of_the_wrong_shape_is_a_failure_never_an_empty_answer(
    app_factory: AppFactory, fake_llm: FakeLLM, case: str
) -> None:
    app = await app_factory(one_endpoint(fake_llm))
    reply, why = wrong_shape(case)
    fake_llm.script(reply)
    chat = await connect(app)
    answer = await chat.ask("hello", timeout=10)
    assert answer["role"] == "system", answer
    assert "not a chat completion" in answer["text"] and why in answer["text"], answer
    assert "base_url" in answer["text"]  # what to check
    rows = await app.db.fetchall("SELECT role, content FROM messages WHERE thread_id = ?",
                                 (chat.thread_id,))
    assert [r["role"] for r in rows] == ["user", "notice"], [tuple(r) for r in rows]
    assert len(fake_llm.requests) == 1  # not retried: the same server would answer the same
    await assert_recovers(chat)  # the fault clears: the next reply is a good one
    await chat.close()


@pytest.mark.parametrize("case", ["a choice without delta", "body: a list"])
async def test_json_of_the_wrong_shape_fails_over_to_the_next_endpoint(
    app_factory: AppFactory, fake_llm: FakeLLM,
    fake_llm_factory: Callable[..., Awaitable[FakeLLM]], case: str
) -> None:
    second = await fake_llm_factory()
    app = await app_factory({"llm": {"endpoints": [
        {"name": "odd", "base_url": fake_llm.base_url, "api_key": LLM_KEY},
        {"name": "good", "base_url": second.base_url, "api_key": LLM_KEY}]}})
    fake_llm.script(wrong_shape(case)[0])
    chat = await connect(app)
    assert (await chat.ask("hello", timeout=10))["text"] == "echo: hello"
    assert len(fake_llm.requests) == 1 and len(second.requests) == 1
    await chat.close()


def chunk(choice: dict[str, Any], **top: Any) -> str:
    return json.dumps({"id": "c1", "object": "chat.completion.chunk", "model": "m",
                       "choices": [{"index": 0, "finish_reason": None, **choice}], **top})


FILTER = {"hate": {"filtered": False, "severity": "safe"},
          "violence": {"filtered": False, "severity": "safe"}}


async def test_azure_content_filter_chunks_are_skipped_not_a_failure(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    """Azure streams its filter results as choices with no delta and a null finish_reason."""
    app = await app_factory(one_endpoint(fake_llm))
    offsets = {"check_offset": 0, "start_offset": 0, "end_offset": 5}
    fake_llm.script(Reply(raw_chunks=[
        json.dumps({"choices": [], "id": "", "model": "", "object": "",
                    "prompt_filter_results": [{"prompt_index": 0,
                                               "content_filter_results": FILTER}]}),
        chunk({"delta": {"role": "assistant", "content": ""}}),
        chunk({"delta": {"content": "Hello"}}),
        chunk({"content_filter_offsets": offsets, "content_filter_results": FILTER}),
        chunk({"delta": {"content": " there"}}),
        chunk({"delta": {}, "finish_reason": "stop"}),
        chunk({"content_filter_offsets": offsets, "content_filter_results": FILTER}),
    ]))
    chat = await connect(app)
    answer = await chat.ask("hello", timeout=10)
    assert (answer["role"], answer["text"]) == ("assistant", "Hello there")
    assert len(fake_llm.requests) == 1
    await chat.close()


async def test_tool_calls_without_index_in_separate_chunks_stay_separate(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    """A server that leaves out ``index``: each new ``id`` starts a new call; a part without
    an id continues the call it follows."""
    app = await app_factory(one_endpoint(fake_llm))
    (app.data_dir / "notes.txt").write_text("the notes\n")

    def call(part: dict[str, Any]) -> str:
        return chunk({"delta": {"tool_calls": [part]}})

    fake_llm.script(
        Reply(raw_chunks=[
            call({"id": "call_a", "type": "function",
                  "function": {"name": "list_dir", "arguments": '{"path": '}}),
            call({"function": {"arguments": '"."}'}}),
            call({"id": "call_b", "type": "function",
                  "function": {"name": "read_file", "arguments": ""}}),
            call({"function": {"arguments": '{"path": "notes.txt"}'}}),
            chunk({"delta": {}, "finish_reason": "tool_calls"}),
        ]),
        Reply(text="read both"),
    )
    chat = await connect(app)
    assert (await chat.ask("look", timeout=10))["text"] == "read both"
    messages = fake_llm.requests[-1]["messages"]
    (asked,) = [m for m in messages if m["role"] == "assistant" and m.get("tool_calls")]
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in asked["tool_calls"]] == [("call_a", "list_dir", {"path": "."}),
                                              ("call_b", "read_file", {"path": "notes.txt"})]
    results = {m["tool_call_id"]: m["content"] for m in messages if m["role"] == "tool"}
    assert "notes.txt" in results["call_a"] and "the notes" in results["call_b"]
    await chat.close()


async def test_a_whole_completion_from_a_server_ignoring_stream_is_an_answer(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(one_endpoint(fake_llm))
    fake_llm.script(Reply(raw_body=completion_json("all at once")),
                    Reply(raw_body=completion_json("", [("no_such_tool", {"x": 1})])))
    chat = await connect(app)
    assert (await chat.ask("hello", timeout=10))["text"] == "all at once"
    # Its tool calls are read too: the unknown tool's error goes back to the model.
    assert (await chat.ask("use a tool", timeout=10))["text"] == "echo: use a tool"
    assert fake_llm.requests[-1]["messages"][-1]["role"] == "tool"
    await chat.close()


async def test_an_empty_answer_is_a_clear_notice_not_an_empty_message(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(one_endpoint(fake_llm))
    fake_llm.script(Reply(text=""), Reply(text="  \n "))
    chat = await connect(app)
    for _ in range(2):
        answer = await chat.ask("hello", timeout=10)
        assert answer["role"] == "system", answer
        assert "empty answer" in answer["text"] and "try again" in answer["text"]
    rows = await app.db.fetchall("SELECT role FROM messages WHERE thread_id = ?",
                                 (chat.thread_id,))
    assert [r["role"] for r in rows] == ["user", "notice"] * 2
    await assert_recovers(chat)
    await chat.close()


async def test_a_stream_cut_halfway_is_reset_and_reported_and_the_next_turn_works(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(one_endpoint(fake_llm, retries=1))
    cut = Reply(text="this answer breaks off in the middle", cut_after_chunks=3)
    fake_llm.script(cut, cut)
    chat = await connect(app)
    assert (await chat.send("tell me"))["type"] == "ack"
    events = []
    while True:
        event = await chat.next_event(10)
        events.append(event)
        if event.get("type") == "message" and event.get("role") in ("assistant", "system"):
            break
    kinds = [e["type"] for e in events]
    assert "delta" in kinds and "reset" in kinds  # the half answer was shown, then taken back
    assert events[-1]["role"] == "system"
    assert "broke off in the middle" in events[-1]["text"]
    # The broken half is not stored as an answer.
    rows = await app.db.fetchall("SELECT role, content FROM messages WHERE thread_id = ?",
                                 (chat.thread_id,))
    assert [r["role"] for r in rows] == ["user", "notice"]
    await assert_recovers(chat)
    await chat.close()


async def test_a_message_the_disk_refuses_is_not_acked_and_says_so_then_works_again(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    chat = await connect(app)
    await app.db.conn.execute("PRAGMA query_only = ON")  # every write now fails
    refused = await chat.send("keep this", client_id="c1")
    assert refused["type"] == "error" and refused["code"] == "not_stored", refused
    assert "Could not store your message" in refused["message"]
    assert "send it again" in refused["message"]
    assert len(fake_llm.requests) == 0  # nothing ran on a message that was not stored
    # The socket and the daemon are still there; reads still work.
    assert (await chat.send("still refused", client_id="c2"))["code"] == "not_stored"

    await app.db.conn.execute("PRAGMA query_only = OFF")  # the fault clears
    assert (await chat.send("keep this", client_id="c1"))["type"] == "ack"  # resent as is
    reply = await chat.reply(10)
    assert reply["text"] == "echo: keep this"
    rows = await app.db.fetchall("SELECT client_id, status FROM inbox")
    assert [(r["client_id"], r["status"]) for r in rows] == [("c1", "done")]
    await chat.close()


async def test_an_answer_the_disk_refuses_is_announced_then_stored_and_sent_once_it_can(
    app_factory: AppFactory, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    app = await app_factory()
    chat = await connect(app)
    thinking = asyncio.Event()
    fake_llm.script(Reply(text="worth keeping", held=thinking))
    assert (await chat.send("question"))["type"] == "ack"
    async with asyncio.timeout(5):
        await fake_llm.wait_until(lambda: fake_llm.in_flight == 1)
    await app.db.conn.execute("PRAGMA query_only = ON")  # the disk goes away mid-turn
    thinking.set()  # and only then does the model answer
    notice = await chat.reply(10)
    assert notice["role"] == "system"
    assert "could not store my answer" in notice["text"]
    assert "keep trying" in notice["text"]
    def attempts() -> int:
        return sum("could not store the turn's answer" in r.getMessage()
                   for r in caplog.records)

    await eventually(lambda: attempts() >= 3)  # counted, not a pause: three failed attempts
    assert app.bus.is_busy(chat.thread_id)  # type: ignore[arg-type]

    await app.db.conn.execute("PRAGMA query_only = OFF")
    answer = await chat.reply(10)  # stored and delivered, once
    assert answer["role"] == "assistant" and answer["text"] == "worth keeping"
    rows = await app.db.fetchall("SELECT role, content FROM messages WHERE thread_id = ?",
                                 (chat.thread_id,))
    assert [(r["role"], r["content"]) for r in rows] == [
        ("user", "question"), ("assistant", "worth keeping")]
    assert [r["status"] for r in await app.db.fetchall("SELECT status FROM inbox")] == ["done"]
    await assert_recovers(chat)
    await chat.close()


class FlakyReminderStore(ReminderStore):
    """The app's reminder table, whose next reads fail as a disk error would."""

    def __init__(self, store: ReminderStore) -> None:
        super().__init__(store.db, store.mirror, store.tz)
        self.failures: list[str] = []
        """Names of the reads to fail, in order; each fails once."""
        self.failed: list[str] = []

    def _maybe_fail(self, name: str) -> None:
        if self.failures and self.failures[0] == name:
            self.failed.append(self.failures.pop(0))
            raise sqlite3.OperationalError("disk I/O error")

    async def due(self, now: float, limit: int = 500) -> list[Reminder]:
        self._maybe_fail("due")
        return await super().due(now, limit)

    async def next_due_at(self) -> float | None:
        self._maybe_fail("next_due_at")
        return await super().next_due_at()


async def test_a_reminder_read_that_fails_is_retried_and_nothing_is_lost(
    app_factory: AppFactory, fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wake-up is a one-shot job: a failed read must arm a retry, or no reminder fires
    until the next add, cancel or restart."""
    monkeypatch.setattr("ganglion.triggers.reminders.RETRY_SECONDS", 0.3)
    app = await app_factory({"scheduler": {"timezone": "UTC"}})
    flaky = FlakyReminderStore(app.reminder_store)
    app.reminders.store = flaky
    chat = await connect(app)
    tid = ThreadId(chat.thread_id)
    now = time.time()
    await app.reminders.add(NewReminder(tid, "first", now + 0.5))
    await app.reminders.add(NewReminder(tid, "second", now + 2.0))
    # The wake-up for "first" cannot read what is due; the retry fires it and then cannot
    # read when to wake next; the retry after that arms "second".
    flaky.failures = ["due", "next_due_at"]
    texts = [(await chat.reply(10))["text"] for _ in range(2)]
    assert texts == ["⏰ Reminder: first", "⏰ Reminder: second"]
    assert flaky.failed == ["due", "next_due_at"]
    rows = await app.db.fetchall("SELECT text, status, fired FROM reminders ORDER BY id")
    assert [tuple(r) for r in rows] == [("first", "done", 1), ("second", "done", 1)]
    await chat.close()
