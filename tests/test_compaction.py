"""Summaries that shrink, over the fake LLM: capped, checked shorter than what they replace,
asked again once, else cut; an old large summary summarised again; a wordy model does not
compact at every turn; the tab sees "summarising" while it runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

from conftest import AppFactory, connect
from fake_llm import FakeLLM, Reply
from wsclient import ChatClient

from ganglion.app import App
from ganglion.messages import ThreadId
from ganglion.storage.history import StoredMessage
from ganglion.tokens import estimate_tokens, message_tokens
from ganglion.turn.compaction import transcript_text, transcript_within
from ganglion.turn.summary import CUT_MARK, cut_summary, summary_cap

CONTEXT = 2048
SENTENCE = "The user wrote at length about owls and their nests in the old barn. "


def sentences(n: int) -> str:
    """As long as ``n`` SENTENCEs (give or take one sentence), in sentences like it but each
    numbered: wordy, yet no exact cycle for the client's repetition guard to stop (a model
    repeating one sentence word for word would be stopped)."""
    text, i = "", 0
    while len(text) < n * len(SENTENCE):
        text += SENTENCE.replace("owls", f"owls ({i})")
        i += 1
    return text


def is_summary(body: dict[str, Any]) -> bool:
    return str(body["messages"][0]["content"]).startswith("You compress a conversation")


def is_flush(body: dict[str, Any]) -> bool:
    return str(body["messages"][0]["content"]).startswith("The conversation below is about")


def summary_requests(fake_llm: FakeLLM) -> list[dict[str, Any]]:
    return [b for b in fake_llm.requests if is_summary(b)]


def model(summary: Callable[[dict[str, Any]], Reply], answer: str = "") -> Any:
    """Summary requests answered by ``summary``, memory flushes with "nothing", turns with
    ``answer`` (else an echo)."""

    def reply(body: dict[str, Any]) -> Reply:
        if is_summary(body):
            return summary(body)
        if is_flush(body):
            return Reply(text="nothing")
        last = [m["content"] for m in body["messages"] if m["role"] == "user"][-1]
        return Reply(text=answer or f"echo: {last[:40]}")

    return reply


def longer_than_input(body: dict[str, Any]) -> Reply:
    """A wordy summariser: more sentences than the transcript has characters / 60."""
    transcript = body["messages"][1]["content"]
    return Reply(text=sentences(len(transcript) // len(SENTENCE) + 2))


async def talk_until_compacted(chat: ChatClient, turns: int = 8) -> list[str]:
    """Long messages until a compaction notice; the notices seen."""
    filler = "owls " * 300  # ~375 tokens each: compaction is due by the 4th or so
    for i in range(turns):
        await chat.send(f"message {i}: {filler}")
        notices = []
        reply = await chat.reply()
        while reply["role"] == "system":
            notices.append(reply["text"])
            reply = await chat.reply()
        if any("Compacted" in n for n in notices):
            return notices
    raise AssertionError(f"no compaction in {turns} turns")


async def stored_summary(app: App, chat: ChatClient) -> str:
    row = await app.db.fetchone(
        "SELECT content FROM messages WHERE thread_id = ? AND role = 'summary' AND in_context = 1",
        (chat.thread_id,))
    assert row is not None
    content: str = row["content"]
    return content


def test_the_cap_is_a_quarter_of_the_input_within_bounds() -> None:
    assert summary_cap(2000, 32768) == 500
    assert summary_cap(400, 32768) == 256  # never less than 256...
    assert summary_cap(20000, 32768) == 4096  # ...nor more than 1/8 of the context
    assert summary_cap(3000, 2048) == 256


def test_a_cut_ends_at_a_sentence_and_is_marked() -> None:
    text = sentences(20)
    cut = cut_summary(text, 100)
    assert estimate_tokens(cut) <= 100 and cut.endswith("barn.\n" + CUT_MARK)
    # A text the server stopped loses its unfinished sentence, short as it is.
    assert cut_summary("Owls nest. They hun", 100, ended=False) == "Owls nest.\n" + CUT_MARK


async def test_a_summary_within_its_cap_is_kept_as_written_after_one_request(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory({"llm": {"context_tokens": CONTEXT}})
    fake_llm.script(*[model(lambda _b: Reply(text="SUMMARY: owls, nests."))] * 30)
    chat = await connect(app)
    await talk_until_compacted(chat)
    requests = summary_requests(fake_llm)
    assert len(requests) == 1 and requests[0]["max_tokens"] == summary_cap(3000, CONTEXT)
    assert await stored_summary(app, chat) == "SUMMARY: owls, nests."
    await chat.close()


async def test_a_summary_longer_than_its_input_is_asked_again_then_cut(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory({"llm": {"context_tokens": CONTEXT}})
    fake_llm.script(*[model(longer_than_input)] * 30)
    chat = await connect(app)
    await talk_until_compacted(chat)
    first, again = summary_requests(fake_llm)
    cap = first["max_tokens"]
    assert cap == again["max_tokens"] == 256
    assert first["messages"][1] == again["messages"][1]  # the same transcript...
    assert "at most 96 words" in again["messages"][0]["content"]  # ...in fewer words
    summary = await stored_summary(app, chat)
    transcript_tokens = estimate_tokens(first["messages"][1]["content"])
    assert estimate_tokens(summary) <= cap < transcript_tokens
    assert summary.endswith("barn.\n" + CUT_MARK)
    # The next turn's prompt holds the cut summary, not the wordy one.
    assert CUT_MARK in json.dumps(fake_llm.requests[-1]["messages"])
    await chat.close()


def stopped_at_the_cap(body: dict[str, Any]) -> Reply:
    """A summary the server stopped at max_tokens: short enough, but unfinished."""
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "fake-model"}
    text = {**chunk, "choices": [{"index": 0, "delta": {
        "content": "The user likes owls. They asked where barn owls nest and the bes"},
        "finish_reason": None}]}
    end = {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]}
    return Reply(raw_chunks=[json.dumps(text), json.dumps(end)])


async def test_a_summary_stopped_at_its_cap_is_cut_at_a_sentence_not_kept_whole(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory({"llm": {"context_tokens": CONTEXT}})
    fake_llm.script(*[model(stopped_at_the_cap)] * 30)
    chat = await connect(app)
    await talk_until_compacted(chat)
    assert len(summary_requests(fake_llm)) == 1  # cut, not asked again: as slow once more
    assert await stored_summary(app, chat) == "The user likes owls.\n" + CUT_MARK
    await chat.close()


async def test_an_old_large_summary_is_summarised_again(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory({"llm": {"context_tokens": CONTEXT}})
    fake_llm.script(*[model(lambda _b: Reply(text="SUMMARY: owls, shorter."))] * 10)
    chat = await connect(app)
    big = sentences(80)  # ~1,400 tokens: a summary from a model that ignored any cap
    await app.history.replace_with_summary(ThreadId(chat.thread_id), 0, big)
    notices = []
    reply = await chat.ask("and now?")
    while reply["role"] == "system":
        notices.append(reply["text"])
        reply = await chat.reply()
    assert any("Compacted 1 earlier message into a summary" in n for n in notices), notices
    (request,) = summary_requests(fake_llm)
    assert request["messages"][1]["content"] == f"[earlier summary]\n{big}"
    # Its facts were offered to memory when it was written: no flush for it alone.
    assert not any(is_flush(b) for b in fake_llm.requests)
    assert await stored_summary(app, chat) == "SUMMARY: owls, shorter."
    answer = json.dumps(fake_llm.requests[-1]["messages"])
    assert "SUMMARY: owls, shorter." in answer and "old barn" not in answer
    assert reply["text"] == "echo: and now?"
    await chat.close()


async def test_a_summary_too_large_for_the_model_is_cut_before_it_is_summarised_again(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    """The issue's 27,939-character summary with a 2,048-token budget: the summary request
    still fits the model's context."""
    app = await app_factory({"llm": {"context_tokens": CONTEXT}})
    fake_llm.script(*[model(lambda _b: Reply(text="SUMMARY: owls, shorter."))] * 10)
    chat = await connect(app)
    big = sentences(400)  # 28,000 characters, ~7,000 tokens
    await app.history.replace_with_summary(ThreadId(chat.thread_id), 0, big)
    reply = await chat.ask("and now?")
    while reply["role"] == "system":
        reply = await chat.reply()
    assert reply["text"] == "echo: and now?"
    (request,) = summary_requests(fake_llm)
    sent = request["messages"][1]["content"]
    assert sent.startswith(f"[earlier summary]\n{big[:60]}") and sent.endswith(CUT_MARK)
    asked = sum(message_tokens(m["content"]) for m in request["messages"])
    assert asked + request["max_tokens"] <= CONTEXT
    assert await stored_summary(app, chat) == "SUMMARY: owls, shorter."


def test_a_transcript_too_long_for_the_room_leaves_out_its_oldest_messages() -> None:
    tid = ThreadId("web_" + "0" * 32)
    old = [StoredMessage(0, tid, "summary", sentences(40))] + [
        StoredMessage(i, tid, "user" if i % 2 else "assistant", f"message {i}: " + "owls " * 80)
        for i in range(1, 11)]
    text = transcript_within(old, 600)
    assert estimate_tokens(text) <= 600
    assert text.startswith(f"[earlier summary]\n{old[0].content[:60]}") and CUT_MARK in text
    assert "[6 earlier messages left out]" in text and "message 6:" not in text
    assert "message 7:" in text and "message 10:" in text
    assert transcript_within(old[1:3], 600) == transcript_text(old[1:3])  # it fits: whole


async def test_a_wordy_model_compacts_a_bounded_number_of_times(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    """Long answers and summaries longer than their input: each compaction leaves the
    context under half the budget, and a turn adds ~300 tokens, so two turns at least pass
    before the next (at 75%); and no prompt outgrows the budget (the summaries were kept
    whole, growing at each compaction: 5 compactions, prompts of 3,300 tokens). The budget
    makes room for what every request carries besides the history (system texts and tool
    schemas, ~2,000 tokens), so that half of it still leaves the history room to grow."""
    budget = 5120
    app = await app_factory({"llm": {"context_tokens": budget}})
    fake_llm.script(*[model(longer_than_input, answer=sentences(18))] * 100)  # ~300 tokens
    chat = await connect(app)
    compactions = 0
    for i in range(20):
        await chat.send(f"tell me more, part {i}")
        reply = await chat.reply()
        while reply["role"] == "system":
            compactions += "Compacted" in reply["text"]
            reply = await chat.reply()
        assert reply["text"].startswith("The user wrote")
    assert 2 <= compactions <= 6  # turns pass between two: each leaves room to grow
    prompts = [b["messages"] for b in fake_llm.requests if not (is_summary(b) or is_flush(b))]
    assert len(prompts) == 20
    assert all(sum(message_tokens(str(m["content"])) for m in p) < budget for p in prompts)
    await chat.close()


async def test_the_tab_sees_summarising_before_the_answer(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory({"llm": {"context_tokens": CONTEXT}})
    held = asyncio.Event()

    def held_summary(_body: dict[str, Any]) -> Reply:
        return Reply(text="SUMMARY: owls.", held=held)

    fake_llm.script(*[model(held_summary)] * 30)
    chat = await connect(app)
    big = sentences(80)
    await app.history.replace_with_summary(ThreadId(chat.thread_id), 0, big)
    await chat.send("and now?")
    states = []
    while "summarising" not in states:
        event = await chat.next_event()
        assert event["type"] != "message", event  # nothing answered before it
        if event["type"] == "state":
            states.append(event["state"])
    assert states == ["thinking", "summarising"]
    held.set()  # only now does the summary come
    events = []
    while not (events and events[-1]["type"] == "message" and events[-1]["role"] == "assistant"):
        events.append(await chat.next_event())
    after = [e["state"] for e in events if e["type"] == "state"]
    assert after[:2] == ["thinking", "streaming"]
    await chat.close()
