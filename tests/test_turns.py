"""Turns end to end over the web socket: streaming, tools, errors, failover, compaction."""

from __future__ import annotations

import asyncio
from typing import Any

from conftest import AppFactory, connect
from fake_llm import FakeLLM, Reply, system_of

from ganglion.messages import Inbound, Source, ThreadId


def user_texts(body: dict[str, Any]) -> list[str]:
    return [m["content"] for m in body["messages"] if m["role"] == "user"]


async def test_a_turn_streams_deltas_then_the_final_message(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    fake_llm.script(Reply(text="The answer is **forty-two**, as everyone knows."))
    chat = await connect(app)
    assert (await chat.send("what is it?"))["type"] == "ack"
    deltas: list[str] = []
    states: list[str] = []
    while True:
        event = await chat.next_event()
        if event["type"] == "delta":
            deltas.append(event["text"])
        elif event["type"] == "state":
            states.append(event["state"])
        elif event["type"] == "message":
            break
    assert len(deltas) > 1 and "".join(deltas) == event["text"]
    assert "<strong>forty-two</strong>" in event["html"]
    assert states[:2] == ["thinking", "streaming"]
    body = fake_llm.requests[-1]
    assert body["model"] == "fake-model" and body["stream"] is True
    assert "You are Ganglion" in body["messages"][0]["content"]  # data/BASE_PROMPT.txt
    assert body["messages"][-2]["role"] == "system"  # the time, just before the question
    assert body["messages"][-2]["content"].startswith("Current local time:")
    await chat.close()


async def test_history_is_kept_per_thread(app_factory: AppFactory, fake_llm: FakeLLM) -> None:
    app = await app_factory()
    a, b = await connect(app), await connect(app)
    await a.ask("my name is Ada")
    await b.ask("my name is Bob")
    await a.ask("what is my name?")
    assert user_texts(fake_llm.requests[-1]) == ["my name is Ada", "what is my name?"]
    await b.ask("and mine?")
    assert user_texts(fake_llm.requests[-1]) == ["my name is Bob", "and mine?"]
    await a.close()
    await b.close()


async def test_prompt_picks_up_memory_files_and_skills(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    (app.data_dir / "MEMORIES.txt").write_text("The user's cat is called Tiber.\n")
    (app.data_dir / "HEARTBEATS.txt").write_text("- follow up on the dentist\n")
    (app.data_dir / "skills" / "backup.md").write_text("# Back up the laptop with restic\n")
    chat = await connect(app)
    await chat.ask("hi")
    system = system_of(fake_llm.requests[-1])
    assert "Tiber" in system and "dentist" in system
    assert "skills/backup.md: Back up the laptop with restic" in system
    (app.data_dir / "MEMORIES.txt").write_text("The user's cat is called Nero now.\n")
    await chat.ask("again")
    system = system_of(fake_llm.requests[-1])
    assert "Nero" in system and "Tiber" not in system
    await chat.close()


async def test_tool_calls_loop_until_an_answer(app_factory: AppFactory, fake_llm: FakeLLM) -> None:
    app = await app_factory()
    seen: list[tuple[str, str]] = []

    async def lookup(key: str, note: str = "") -> str:
        """Look a key up.

        Args:
            key: what to look up
            note: optional note
        """
        seen.append(("lookup", key))
        return f"value-of-{key}"

    app.tools.add(lookup)
    fake_llm.script(
        # null for an optional argument means "left out"
        Reply(tool_calls=[("lookup", {"key": "a"}), ("lookup", {"key": "b", "note": None})]),
        Reply(tool_calls=[("lookup", '{"key": "c"')]),  # malformed JSON from the model
        Reply(tool_calls=[("no_such_tool", {})]),
        Reply(text="a and b found"),
    )
    chat = await connect(app)
    reply = await chat.ask("find a and b")
    assert reply["text"] == "a and b found"
    assert seen == [("lookup", "a"), ("lookup", "b")]
    offered = {t["function"]["name"]: t["function"] for t in fake_llm.requests[0]["tools"]}
    assert offered["lookup"]["parameters"]["required"] == ["key"]
    tool_results = [m["content"] for m in fake_llm.requests[-1]["messages"] if m["role"] == "tool"]
    # Tool output reaches the model fenced as data (ganglion.untrusted).
    for result, value in zip(tool_results[:2], ["value-of-a", "value-of-b"], strict=True):
        assert value in result and "not instructions" in result
    assert tool_results[2].startswith("error: arguments are not valid JSON")
    assert tool_results[3].startswith("error: no tool named 'no_such_tool'")
    # The next turn's history holds the tool exchange in the right order.
    await chat.ask("thanks")
    roles = [m["role"] for m in fake_llm.requests[-1]["messages"]]
    assert roles == ["system", "system", "user", "assistant", "tool", "tool", "assistant",
                     "tool", "assistant", "tool", "assistant", "system", "user"]
    await chat.close()


async def test_tool_step_limit_ends_the_turn_with_a_notice(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory({"llm": {"max_tool_steps": 3}})

    async def ping() -> str:
        """Ping."""
        return "pong"

    app.tools.add(ping)
    fake_llm.script(*[Reply(tool_calls=[("ping", {})]) for _ in range(3)])
    chat = await connect(app)
    reply = await chat.ask("loop forever")
    assert reply["role"] == "system" and "3 tool steps" in reply["text"]
    assert len(fake_llm.requests) == 3
    await chat.close()


async def test_retry_then_success_after_a_500(app_factory: AppFactory, fake_llm: FakeLLM) -> None:
    app = await app_factory()
    fake_llm.script(Reply(status=500), Reply(text="recovered"))
    chat = await connect(app)
    assert (await chat.ask("hi"))["text"] == "recovered"
    await chat.close()


async def test_failover_to_a_second_endpoint(
    app_factory: AppFactory, fake_llm: FakeLLM, fake_llm_factory: Any
) -> None:
    second: FakeLLM = await fake_llm_factory()
    second.script(Reply(text="from the second endpoint"))
    app = await app_factory({"llm": {"endpoints": [
        {"name": "first", "base_url": fake_llm.base_url},
        {"name": "second", "base_url": second.base_url},
    ]}})
    await fake_llm.stop()  # the first refuses connections
    chat = await connect(app)
    assert (await chat.ask("hi"))["text"] == "from the second endpoint"
    await chat.close()


async def test_all_endpoints_failing_gives_a_clear_message_and_recovers(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    port = fake_llm.port
    await fake_llm.stop()
    chat = await connect(app)
    reply = await chat.ask("anyone there?")
    assert reply["role"] == "system"
    assert "language model" in reply["text"] and "connection refused" in reply["text"]
    assert "fake" in reply["text"] and "sk-test" not in reply["text"]
    await fake_llm.start(port)  # the fault clears: the next message works
    assert (await chat.ask("now?"))["text"] == "echo: now?"
    await chat.close()


async def test_stop_cancels_the_running_turn(app_factory: AppFactory, fake_llm: FakeLLM) -> None:
    app = await app_factory()
    # Six words 1 s apart: the Stop, sent at the first, has 5 s before the answer ends.
    fake_llm.script(Reply(text="one two three four five six", chunk_delay=1.0))
    chat = await connect(app)
    await chat.send("tell me a long story")
    while (await chat.next_event())["type"] != "delta":
        pass
    await chat.send_raw({"type": "stop"})
    reply = await chat.reply()
    while reply["role"] != "system":
        reply = await chat.reply()
    assert reply["text"] == "Stopped."
    assert (await chat.ask("still there?"))["text"] == "echo: still there?"
    await chat.close()


async def test_a_stop_keeps_what_the_tools_did_and_cuts_off_the_call_in_flight(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory({"tools": {"policy": {"shell": "on"}}})
    fake_llm.script(
        Reply(tool_calls=[("memory_append", {"file": "MEMORIES.txt", "text": "likes tea"})]),
        Reply(tool_calls=[("shell", {"command": "sleep 30"})]),  # under way at the Stop
    )
    chat = await connect(app)
    await chat.send("remember that I like tea, then take a nap")
    async with asyncio.timeout(10):  # the first call is done and shown...
        while (await chat.next_event()).get("role") != "tool":
            pass
        while (await chat.next_event()).get("state") != "tool":
            pass  # ...and the second one is kept, its shell starting
    # Whether or not the shell has started yet, the Stop gives the call the same result.
    await chat.send_raw({"type": "stop"})
    reply = await chat.reply()
    while reply["role"] != "system":
        reply = await chat.reply()
    assert reply["text"] == "Stopped."
    assert (await chat.ask("what did you do?"))["text"] == "echo: what did you do?"
    # The next turn's model sees both calls: the one done, and the one the Stop cut off.
    seen = fake_llm.requests[-1]["messages"]
    results = [m["content"] for m in seen if m["role"] == "tool"]
    assert len(results) == 2 and "likes tea" not in results[1]
    assert results[1].startswith("error: this call was cut off"), results[1]
    calls = [c["function"]["name"] for m in seen if m["role"] == "assistant"
             for c in m.get("tool_calls") or []]
    assert calls == ["memory_append", "shell"]
    await chat.close()


async def test_a_turn_that_fails_after_a_tool_ran_keeps_what_the_tool_did(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    """The model set a reminder, then its next call failed: the user is told, and the next
    turn's model sees the reminder was set (it would set a second one otherwise)."""
    app = await app_factory()
    fake_llm.script(
        Reply(tool_calls=[("set_reminder", {"text": "Stretch", "in_minutes": 30})]),
        Reply(status=500), Reply(status=500))  # the answer after the call: every try fails
    chat = await connect(app)
    failed = await chat.ask("remind me to stretch in half an hour")
    while failed["role"] == "tool":
        failed = await chat.reply()
    assert failed["role"] == "system" and "could not get an answer" in failed["text"]
    assert (await chat.ask("did it work?"))["text"] == "echo: did it work?"
    seen = fake_llm.requests[-1]["messages"]
    assert [c["function"]["name"] for m in seen if m["role"] == "assistant"
            for c in m.get("tool_calls") or []] == ["set_reminder"]
    assert any(m["role"] == "tool" and "Reminder #1 set" in m["content"] for m in seen)
    rows = await app.db.fetchall("SELECT count(*) AS n FROM reminders")
    assert rows[0]["n"] == 1
    await chat.close()


async def test_a_stop_that_lands_after_the_answer_was_stored_adds_nothing(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    """The bus may see the cancel only after the turn stored its answer: the message is
    answered once, not once more with "Stopped."."""
    app = await app_factory()
    chat = await connect(app)
    assert (await chat.ask("hello"))["text"] == "echo: hello"
    row = await app.db.fetchone("SELECT * FROM inbox WHERE text = 'hello'")
    assert row is not None and row["status"] == "done"
    msg = Inbound(ThreadId(row["thread_id"]), row["text"], row["sender"], Source.WEB,
                  row["client_id"], id=row["id"])
    await app.worker.turn_stopped(msg)
    rows = await app.db.fetchall("SELECT role, content FROM messages WHERE inbox_id = ?",
                                 (msg.id,))
    assert [(r["role"], r["content"]) for r in rows] == [
        ("user", "hello"), ("assistant", "echo: hello")]
    await chat.close()


def summarising(summary: str) -> Any:
    """A scripted LLM that answers compaction requests with ``summary`` and echoes the rest."""

    def reply(body: dict[str, Any]) -> Reply:
        if body["messages"][0]["content"].startswith("You compress a conversation"):
            return Reply(text=summary)
        return Reply(text="echo: " + user_texts(body)[-1][:40])

    return reply


async def test_compaction_triggers_and_keeps_the_conversation_coherent(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory({"llm": {"context_tokens": 2048}})
    fake_llm.script(*[summarising("SUMMARY: the user likes long messages about owls")] * 12)
    chat = await connect(app)
    filler = "owls " * 300  # ~375 tokens each
    notices = []
    for i in range(6):
        await chat.send(f"message {i}: {filler}")
        reply = await chat.reply()
        while reply["role"] == "system":
            notices.append(reply["text"])
            reply = await chat.reply()
    assert any("Compacted" in n for n in notices)
    compaction = [b for b in fake_llm.requests
                  if b["messages"][0]["content"].startswith("You compress a conversation")]
    assert len(compaction) >= 1
    assert "message 0:" in compaction[0]["messages"][1]["content"]
    last = fake_llm.requests[-1]["messages"]
    assert any(m["role"] == "system" and "SUMMARY: the user likes" in m["content"] for m in last)
    assert "message 0:" not in str(last)
    assert user_texts(fake_llm.requests[-1])[-1].startswith("message 5:")  # the newest is kept
    await chat.close()


def failing_summaries(body: dict[str, Any]) -> Reply:
    """Compaction requests refused (as a compaction_model the server does not have), the
    rest echoed."""
    if body["messages"][0]["content"].startswith("You compress a conversation"):
        return Reply(status=404)
    return Reply(text="echo: " + user_texts(body)[-1][:40])


async def test_a_failing_compaction_still_answers_while_the_history_fits(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    # The system texts and the tool schemas take about 2,100 tokens of the 5,900.
    app = await app_factory({"llm": {"context_tokens": 5900, "compaction_model": "absent"}})
    fake_llm.script(*[failing_summaries] * 40)
    chat = await connect(app)
    filler = "owls " * 300  # ~375 tokens each: compaction is due from the 7th or so
    answers = []
    for i in range(9):
        await chat.send(f"message {i}: {filler}")
        reply = await chat.reply()
        answers.append((reply["role"], reply["text"]))
    # Tried once, then left alone while the history fits (each try costs a call and a
    # memory flush).
    assert [b["model"] for b in fake_llm.requests].count("absent") == 1
    assert answers == [("assistant", f"echo: message {i}: {filler}"[:46]) for i in range(9)]
    # Past the model's context, the user is told why, compaction named, and what to do.
    for i in range(9, 12):
        await chat.send(f"message {i}: {filler}")
        reply = await chat.reply()
    assert reply["role"] == "system", reply
    assert "summarising its older part failed" in reply["text"] and "/new" in reply["text"]
    await chat.close()


async def test_compaction_uses_the_compaction_model_and_turns_the_model(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    fake_llm.models = ["fake-model", "summary-model"]
    app = await app_factory({"llm": {"context_tokens": 2048,
                                     "compaction_model": "summary-model"}})
    fake_llm.script(*[summarising("SUMMARY: owls")] * 20)
    chat = await connect(app)
    filler = "owls " * 300  # ~375 tokens each: compaction comes by itself
    for i in range(6):
        await chat.send(f"message {i}: {filler}")
        while (await chat.reply())["role"] == "system":
            pass
    assert "Compacted" in (await chat.ask("/compact"))["text"]  # and on request
    await chat.close()

    def is_summary(body: dict[str, Any]) -> bool:
        return bool(body["messages"][0]["content"].startswith("You compress a conversation"))

    summaries = [b["model"] for b in fake_llm.requests if is_summary(b)]
    assert len(summaries) >= 2 and set(summaries) == {"summary-model"}
    others = {b["model"] for b in fake_llm.requests if not is_summary(b)}
    assert others == {"fake-model"}  # turns (and the memory flush) keep llm.model


async def test_new_compact_help_and_unknown_commands(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    fake_llm.script(*[summarising("SUMMARY: talked about apples")] * 5)
    chat = await connect(app)
    await chat.ask("apples are red")
    await chat.ask("pears are green")
    calls = len(fake_llm.requests)

    help_text = (await chat.ask("/help"))["text"]
    for name in ("/help", "/new", "/compact"):
        assert name in help_text
    unknown = await chat.ask("!nwe")
    assert "Unknown command" in unknown["text"] and "/new" in unknown["text"]
    assert len(fake_llm.requests) == calls  # no LLM call for commands

    compacted = await chat.ask("/compact")
    assert "Compacted" in compacted["text"]
    await chat.ask("and bananas?")
    assert "SUMMARY: talked about apples" in str(fake_llm.requests[-1]["messages"])
    assert "apples are red" not in str(fake_llm.requests[-1]["messages"])

    assert "fresh conversation" in (await chat.ask("!new"))["text"]
    await chat.ask("hello again")
    assert user_texts(fake_llm.requests[-1]) == ["hello again"]
    assert "SUMMARY" not in str(fake_llm.requests[-1]["messages"])
    await chat.close()

    # The transcript keeps what was said, with /new's answer between (the page's divider).
    again = await connect(app, chat.thread_id)
    texts = [m["text"] for m in again.ready["transcript"]]
    divider = next(i for i, m in enumerate(again.ready["transcript"]) if m.get("divider"))
    assert texts.index("apples are red") < divider < texts.index("hello again")
    await again.close()


async def test_a_slash_path_is_not_a_command(app_factory: AppFactory, fake_llm: FakeLLM) -> None:
    app = await app_factory()
    chat = await connect(app)
    assert (await chat.ask("/etc/hosts looks odd"))["text"] == "echo: /etc/hosts looks odd"
    await chat.close()


async def test_many_threads_at_once_all_answered(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    chats = [await connect(app) for _ in range(20)]
    replies = await asyncio.gather(*(c.ask(f"hi from {i}") for i, c in enumerate(chats)))
    assert [r["text"] for r in replies] == [f"echo: hi from {i}" for i in range(20)]
    for c in chats:
        await c.close()


async def test_the_model_down_notice_names_endpoints_only_to_the_owner_and_trusted(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    """Endpoint names, addresses and config keys are for whoever runs the bot."""
    owner, trusted, user = "@owner:localhost", "@trusted:localhost", "@user:localhost"
    app = await app_factory({"matrix": {"owner": owner, "trusted_users": [trusted],
                                        "allowed_users": [owner, trusted, user]}})
    fake_llm.script(*[Reply(status=500)] * 6)  # every try of every turn fails
    rooms = {who: ThreadId(f"!room{i}:localhost") for i, who in enumerate((owner, trusted, user))}
    for who, room in rooms.items():
        await app.bus.submit(Inbound(room, "hello", who, Source.MATRIX, f"$event-{room}"))
    await app.bus.wait_idle()
    told = {who: [m.content for _, m in await app.outbox.pending(room)]
            for who, room in rooms.items()}
    for who in (owner, trusted):
        assert len(told[who]) == 1 and "could not get an answer" in told[who][0]
        assert "Endpoint 'fake'" in told[who][0] and "llm.endpoints" in told[who][0]
    assert told[user] == ["The model is unavailable, try later."]
