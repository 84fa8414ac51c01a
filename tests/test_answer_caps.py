"""Answer caps over the web socket and real HTTP: max_tokens on every request, an answer cut at
its cap marked and logged, a looping answer stopped (its stream closed) and marked, text that
merely repeats lines left alone, and a tool call written as text never shown as text."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from conftest import AppFactory
from fake_llm import FakeLLM, Reply
from wsclient import ChatClient

from ganglion.app import App
from ganglion.llm.client import LOOPING
from ganglion.llm.repetition import RepetitionGuard
from ganglion.messages import ThreadId

LOOP = "Miscellaneous: Snacks, chips and nuts. "
TABLE = "| # | Item | Price |\n|---|---|---|\n" + "".join(
    f"| {i} | Snack {i % 7} | {i * 1.25:.2f} |\n" for i in range(1, 51))
CODE = "```python\n" + "".join(
    f"print('-' * 40)\nprint('step {i}')\nprint('-' * 40)\n" for i in range(30)) + "```\n"


async def connect(app: App) -> ChatClient:
    assert app.web is not None
    chat = ChatClient(app.web.url, app.web_token)
    await chat.connect()
    return chat


async def turn(chat: ChatClient, text: str) -> tuple[list[str], dict[str, Any]]:
    """Send ``text``; the deltas the tab got (a reset empties them) and the final message."""
    assert (await chat.send(text))["type"] == "ack"
    deltas: list[str] = []
    while True:
        event = await chat.next_event()
        if event["type"] == "delta":
            deltas.append(event["text"])
        elif event["type"] == "reset":
            deltas.clear()
        elif event["type"] == "message" and event["role"] in ("assistant", "system"):
            return deltas, event


def warnings(caplog: pytest.LogCaptureFixture, needle: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and needle in r.getMessage()]


async def test_max_tokens_is_sent_globally_per_model_and_as_ask_says(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    fake_llm.models = ["fake-model", "big-model"]
    app = await app_factory({"llm": {"max_tokens": 1234,
                                     "models": {"big-model": {"max_tokens": 9000}}}})
    chat = await connect(app)
    await turn(chat, "hello")
    assert fake_llm.requests[-1]["max_tokens"] == 1234
    await chat.ask("/ask big-model what is up")
    assert fake_llm.requests[-1]["max_tokens"] == 9000
    await chat.ask("/ask big-model what is up max_tokens=50")
    assert fake_llm.requests[-1]["max_tokens"] == 50
    await chat.ask("/model big-model")
    await turn(chat, "and now?")
    assert fake_llm.requests[-1]["max_tokens"] == 9000
    await chat.close()


async def test_an_answer_cut_at_its_cap_is_marked_and_logged(
    app_factory: AppFactory, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    app = await app_factory()
    fake_llm.script(Reply(text="The list goes on: apples, pears, plu", finish="length"))
    chat = await connect(app)
    deltas, final = await turn(chat, "list fruit")
    mark = "[cut off at 4,096 tokens; ask me to go on]"
    assert final["text"] == f"The list goes on: apples, pears, plu\n\n{mark}"
    assert "".join(deltas) == "The list goes on: apples, pears, plu"
    rows = await app.history.transcript(ThreadId(chat.thread_id))
    assert rows[-1].content.endswith(mark)
    [line] = warnings(caplog, "finish_reason length")
    assert chat.thread_id in line and "fake-model" in line and "4096" in line
    await chat.close()


async def test_a_looping_answer_is_stopped_its_stream_closed_and_marked(
    app_factory: AppFactory, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    app = await app_factory()
    # About 10,000 tokens of one loop; the server never ends the stream by itself after
    # 3,000 words, so the answer can only come back if the client closed it.
    fake_llm.script(Reply(text=LOOP * 1700, stall_after_chunks=3000))
    chat = await connect(app)
    _, final = await turn(chat, "what to buy?")
    assert final["text"].endswith(f"\n\n{LOOPING}")
    assert final["text"].startswith(LOOP * 8)
    assert len(final["text"]) < 2_000  # stopped within a few cycles past the threshold
    assert fake_llm.disconnects == 1  # the server saw the client leave mid-stream
    rows = await app.history.transcript(ThreadId(chat.thread_id))
    assert rows[-1].role == "assistant" and rows[-1].content.endswith(LOOPING)
    [line] = warnings(caplog, "kept repeating itself")
    assert chat.thread_id in line and "fake-model" in line and f"{len(LOOP)} characters" in line
    await chat.close()


@pytest.mark.parametrize("text", [TABLE, CODE, "=" * 80 + "\n" + "Done. " * 60])
async def test_a_table_and_code_with_repeated_lines_are_not_cut(
    app_factory: AppFactory, fake_llm: FakeLLM, text: str
) -> None:
    app = await app_factory()
    fake_llm.script(Reply(text=text))
    chat = await connect(app)
    _, final = await turn(chat, "show me")
    assert final["text"] == text  # whole, unmarked (the fake streams it word by word)
    assert fake_llm.disconnects == 0
    await chat.close()


@pytest.mark.parametrize("text", [TABLE, CODE])
def test_the_guard_lets_repeated_lines_through_even_fed_a_character_at_a_time(
    text: str
) -> None:
    guard = RepetitionGuard()
    assert not any(guard.looping(ch) for ch in text * 1)
    looping = RepetitionGuard()
    assert any(looping.looping(ch) for ch in LOOP * 40)  # while a loop trips it
    assert looping.cycle == len(LOOP)


async def test_a_tool_call_cut_at_the_cap_gets_the_malformed_arguments_error(
    app_factory: AppFactory, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    app = await app_factory()
    fake_llm.script(Reply(tool_calls=[("read_file", '{"path": "notes/a very long na')],
                          finish="length"),
                    Reply(text="That call was cut off."))
    chat = await connect(app)
    _, final = await turn(chat, "read it")
    assert final["text"] == "That call was cut off."
    result = next(m["content"] for m in fake_llm.requests[-1]["messages"] if m["role"] == "tool")
    assert result.startswith("error: arguments are not valid JSON")
    [line] = warnings(caplog, "finish_reason length")
    assert chat.thread_id in line and "1 tool call(s) cut off" in line
    await chat.close()


@pytest.mark.parametrize("call", [
    '<tool_call>\n{"name": "read_file", "arguments": {"path": "a.txt"}}\n</tool_call>',
    '```json\n{"name": "read_file", "arguments": {"path": "a.txt"}}\n```',
    '{"name": "read_file", "arguments": {"path": "a.txt"}}',
])
async def test_a_tool_call_written_as_text_never_reaches_the_tab(
    app_factory: AppFactory, fake_llm: FakeLLM, call: str
) -> None:
    app = await app_factory()
    (app.data_dir / "a.txt").write_text("the note")
    fake_llm.script(Reply(text=call), Reply(text="The note says: the note."))
    chat = await connect(app)
    assert (await chat.send("read a.txt"))["type"] == "ack"
    deltas: list[str] = []
    while (event := await chat.next_event())["type"] != "message" or event["role"] == "tool":
        if event["type"] in ("delta", "reset"):
            deltas.append(f"{event['type']}:{event.get('text', '')}")
    assert event["text"] == "The note says: the note."
    assert not any("read_file" in d or "reset" in d for d in deltas), deltas
    assert len(deltas) > 1 and "".join(d.removeprefix("delta:") for d in deltas) == event["text"]
    tool = next(m["content"] for m in fake_llm.requests[-1]["messages"] if m["role"] == "tool")
    assert "the note" in tool  # it ran as a call
    await chat.close()


async def test_an_answer_that_only_starts_like_a_call_is_shown_whole(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    text = '{"name": "Ada", "born": 1815} is the record you asked for.'
    fake_llm.script(Reply(text=text))
    chat = await connect(app)
    deltas, final = await turn(chat, "give me the record")
    assert final["text"] == text and "".join(deltas) == text
    await chat.close()
