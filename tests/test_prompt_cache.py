"""The request's lasting head stays byte-identical (the server's prompt cache), and the
budget counts every token sent, calibrated by what the server counted."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import yaml
from conftest import AppFactory
from fake_llm import FakeLLM, Reply
from wsclient import ChatClient

from ganglion.app import App
from ganglion.tokens import estimate_tokens, message_tokens

COMPACT = "You compress a conversation"


async def connect(app: App, thread_id: str | None = None) -> ChatClient:
    assert app.web is not None
    chat = ChatClient(app.web.url, app.web_token, thread_id)
    await chat.connect()
    return chat


async def answer(chat: ChatClient, text: str) -> tuple[str, list[str]]:
    """The assistant's answer to ``text``, and the system notices that came before it."""
    notices = []
    reply = await chat.ask(text)
    while reply["role"] == "system":
        notices.append(str(reply["text"]))
        reply = await chat.reply()
    return str(reply["text"]), notices


def echo(body: dict[str, Any]) -> Reply:
    """Summaries for compaction requests, an echo of the last user message otherwise."""
    if body["messages"][0]["content"].startswith(COMPACT):
        return Reply(text="SUMMARY of what came before")
    users = [m["content"] for m in body["messages"] if m["role"] == "user"]
    return Reply(text="echo: " + (users[-1][:40] if users else ""))


def turns(fake: FakeLLM) -> list[dict[str, Any]]:
    """The requests of conversation turns (not summaries, not memory flushes)."""
    return [b for b in fake.requests
            if b["messages"][0]["content"].startswith("You are Ganglion")]  # BASE_PROMPT.txt


def compactions(fake: FakeLLM) -> list[dict[str, Any]]:
    return [b for b in fake.requests if b["messages"][0]["content"].startswith(COMPACT)]


def wire(value: Any) -> str:
    """As the server receives it: the JSON text of a part of the body."""
    return json.dumps(value, ensure_ascii=False)


def volatile_index(body: dict[str, Any]) -> int:
    """Where the time message is: everything before it is the cacheable prefix."""
    found = next((i for i, m in enumerate(body["messages"])
                  if m["role"] == "system" and m["content"].startswith("Current local time:")),
                 None)
    assert found is not None, "the time is not in a message of its own"
    return found


class Clock:
    """The worker's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = datetime(2026, 12, 2, 9, 59, 30, tzinfo=timezone(timedelta(hours=1)))

    def __call__(self) -> datetime:
        return self.now


async def test_the_head_is_identical_across_turns_and_a_minute_boundary(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    clock = Clock()
    app = await app_factory(clock=clock)
    fake_llm.script(*[echo] * 3)
    chat = await connect(app)
    for text, step in (("first", 0), ("second", 45), ("third", 60)):  # 9:59:30, 10:00:15 ...
        clock.now += timedelta(seconds=step)
        await answer(chat, text)
    one, two, three = turns(fake_llm)
    # The time moved on: only the short message before the question says so.
    assert one["messages"][volatile_index(one)] != two["messages"][volatile_index(two)]
    assert "09:59" in wire(one["messages"]) and "09:59" not in wire(two["messages"])
    for a, b in ((one, two), (two, three)):
        assert wire(a["tools"]) == wire(b["tools"])  # rendered near the top by llama.cpp
        head = volatile_index(a)
        assert head >= 2
        assert wire(b["messages"][:head]) == wire(a["messages"][:head])
    # The history between them is the stored conversation, word for word.
    assert [m["content"] for m in three["messages"][2:volatile_index(three)]] == [
        "first", "echo: first", "second", "echo: second"]
    assert three["messages"][-1]["content"] == "third"
    names = [t["function"]["name"] for t in one["tools"]]
    assert names == sorted(names)
    await chat.close()


async def test_a_memory_edit_changes_the_prompt_only_from_the_memory_section_on(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(clock=Clock())
    (app.data_dir / "skills" / "tea.md").write_text("# Brew green tea at 80 degrees\n")
    (app.data_dir / "MEMORIES.txt").write_text("The user's cat is called Tiber.\n")
    fake_llm.script(*[echo] * 2)
    chat = await connect(app)
    await answer(chat, "hello")
    (app.data_dir / "MEMORIES.txt").write_text("The user's cat is called Nero now.\n")
    await answer(chat, "again")
    before, after = turns(fake_llm)
    assert wire(before["messages"][0]) == wire(after["messages"][0])
    assert wire(before["tools"]) == wire(after["tools"])
    files_before, files_after = before["messages"][1]["content"], after["messages"][1]["content"]
    section = files_before.index("## MEMORIES.txt")
    assert files_after.index("## MEMORIES.txt") == section
    assert files_after[:section] == files_before[:section]  # the skills index, unchanged
    assert "skills/tea.md: Brew green tea" in files_before[:section]
    assert "Tiber" in files_before[section:] and "Nero" in files_after[section:]
    await chat.close()


async def test_the_tool_schemas_count_toward_the_budget(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    # 1,024 tokens: the system texts and the conversation fit in three quarters of it, but
    # not with the JSON of the tools array (a server renders it into the prompt).
    app = await app_factory({"llm": {"context_tokens": 1024}}, clock=Clock())
    fake_llm.script(*[echo] * 6)
    chat = await connect(app)
    owls = "owls " * 240  # 300 tokens: more than the quarter kept verbatim
    assert (await answer(chat, owls))[1] == []  # one message: nothing to compact yet
    first = turns(fake_llm)[0]
    system = sum(message_tokens(m["content"]) for m in first["messages"] if m["role"] == "system")
    tools = estimate_tokens(wire(first["tools"]))
    # What this test is about (about 295 and 1,764 tokens today).
    assert system + 350 < 1024 * 0.75 <= system + tools
    text, notices = await answer(chat, "hello again")
    assert text == "echo: hello again"
    assert any("Compacted" in n for n in notices), notices
    assert "owls owls" in compactions(fake_llm)[0]["messages"][1]["content"]
    await chat.close()


def counting(factor: float) -> Any:
    """A server that reports ``factor`` times our estimate of each turn's prompt."""

    def reply(body: dict[str, Any]) -> Reply:
        got = echo(body)
        if body["messages"][0]["content"].startswith(COMPACT):
            return got
        ours = sum(message_tokens(str(m["content"] or "")) for m in body["messages"])
        ours += estimate_tokens(wire(body.get("tools") or []))
        got.usage = (int(ours * factor), 3)
        return got

    return reply


async def test_the_servers_count_calibrates_the_budget_of_its_model(
    app_factory: AppFactory, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    # The size of a short conversation's request, measured on a first App.
    probe = await app_factory(clock=Clock())
    fake_llm.script(echo)
    chat = await connect(probe)
    await answer(chat, "hello")
    await chat.close()
    await probe.stop()
    first = turns(fake_llm)[0]
    size = sum(message_tokens(m["content"]) for m in first["messages"]) + estimate_tokens(
        wire(first["tools"]))
    fake_llm.reset()

    # Compaction starts at 3 times that, and keeps the last ``size`` tokens verbatim: a
    # first message of 1.5 times ``size`` can be compacted, but by our estimate these turns
    # never reach the trigger...
    budget = size * 4
    app = await app_factory({"llm": {"context_tokens": budget},
                             "paths": {"data_dir": str(tmp_path / "data2")}}, clock=Clock())
    fake_llm.script(counting(1.0), counting(1.0), counting(4.0), *[counting(4.0)] * 4)
    chat = await connect(app)
    owls = "owls " * int(size * 1.5 * 4 / 5)
    for text in (f"one {owls}", "two", "three"):  # the third is counted 4 times ours
        assert (await answer(chat, text))[1] == []
    assert not compactions(fake_llm)  # the history could have been compacted: it was not
    # ...but once the server counted more than we estimate, the next turn compacts.
    text, notices = await answer(chat, "four")
    assert text == "echo: four"
    assert any("Compacted" in n for n in notices), notices
    assert len(compactions(fake_llm)) == 1
    await chat.close()


async def test_a_model_change_applies_to_the_next_turn_with_the_same_head(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    fake_llm.models.append("small-model")
    app = await app_factory({"llm": {"models": {"small-model": {"context_tokens": 1024}}}},
                            clock=Clock())
    fake_llm.script(*[echo] * 6)
    chat = await connect(app)
    assert (await answer(chat, "owls " * 240))[1] == []  # more than a quarter of 1,024
    assert "small-model" in (await chat.ask("/model small-model"))["text"]
    text, notices = await answer(chat, "hello again")
    assert text == "echo: hello again"
    before, after = turns(fake_llm)
    assert (before["model"], after["model"]) == ("fake-model", "small-model")
    assert wire(before["messages"][:2]) == wire(after["messages"][:2])
    assert wire(before["tools"]) == wire(after["tools"])
    # Its own context_tokens (1,024) is the budget now, not llm.context_tokens (32,768).
    assert any("Compacted" in n for n in notices), notices
    await chat.close()


def check_config(cfg: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANGLION_")}
    return subprocess.run([sys.executable, "-m", "ganglion", "--config", str(cfg),
                           "check-config"], cwd=cfg.parent, env=env, capture_output=True,
                          text=True, timeout=60)


def test_check_config_warns_when_the_fixed_part_alone_exceeds_a_models_context(
    tmp_path: Path
) -> None:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "llm": {"context_tokens": 1024, "models": {"small": {"context_tokens": 1100},
                                                   "big": {"context_tokens": 65536}}},
        "paths": {"data_dir": "data"}}))
    result = check_config(cfg)
    assert result.returncode == 0, result.stderr  # valid: a warning, not an error
    assert "llm.context_tokens is 1,024 for model llama3.1" in result.stderr
    assert "llm.models.small.context_tokens is 1,100" in result.stderr
    assert "llm.models.big" not in result.stderr
    assert not (tmp_path / "data").exists()  # a check creates nothing

    # The memory files count as they are on disk now.
    cfg.write_text(yaml.safe_dump({"llm": {"context_tokens": 8192},
                                   "paths": {"data_dir": "data"}}))
    assert "warning" not in check_config(cfg).stderr  # the same check, with room to spare
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "MEMORIES.txt").write_text("The user likes owls. " * 2000)
    result = check_config(cfg)
    assert result.returncode == 0
    assert "llm.context_tokens is 8,192" in result.stderr, result.stderr
