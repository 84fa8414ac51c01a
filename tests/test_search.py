"""Search over the WebSocket: hits across conversations and Matrix rooms, newest first, with
the match marked; a hostile query is plain words; deleted conversations are gone from it;
an upgrade indexes the history already there."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import AppFactory, connect
from fake_llm import FakeLLM, Reply
from wsclient import ChatClient

from ganglion.messages import ThreadId
from ganglion.storage.db import Database
from ganglion.storage.history import History, NewMessage
from ganglion.storage.migrations import MIGRATIONS
from ganglion.storage.search import EmptyQuery, Search, parts


async def frame_of(chat: ChatClient, kind: str) -> dict[str, Any]:
    while (event := await chat.next_event()).get("type") != kind:
        pass
    return event


async def search(chat: ChatClient, query: str, **extra: Any) -> list[dict[str, Any]]:
    await chat.send_raw({"type": "search", "query": query, **extra})
    results = await frame_of(chat, "search_results")
    assert results["query"] == query.strip()
    hits: list[dict[str, Any]] = results["results"]
    return hits


def marked(hit: dict[str, Any]) -> list[str]:
    return [text for text, is_match in hit["snippet"] if is_match]


async def test_hits_across_conversations_newest_first_with_the_match_marked(
    database_url: str, app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    fake_llm.script(Reply(text="Parsnips keep well in a cool cellar."),
                    Reply(text="Noted."), Reply(text="Roast them with honey."))
    first = await connect(app)
    await first.ask("How long do parsnips keep?")
    second = await connect(app)
    await second.ask("Nothing about roots here")
    await second.ask("What to do with parsnips tonight?")
    hits = await search(first, "PARSNIPS")  # case folded
    assert [(h["thread_id"], h["role"]) for h in hits] == [
        (second.thread_id, "user"), (first.thread_id, "assistant"), (first.thread_id, "user")]
    assert [h["id"] for h in hits] == sorted((h["id"] for h in hits), reverse=True)
    assert all(marked(h) == ["parsnips"] or marked(h) == ["Parsnips"] for h in hits)
    assert "".join(text for text, _ in hits[0]["snippet"]) == "What to do with parsnips tonight?"
    assert hits[0]["title"] == "Nothing about roots here" and hits[0]["room"] is False
    # Every word must occur; a limit caps the hits (the newest kept).
    assert [h["role"] for h in await search(first, "parsnips cellar")] == ["assistant"]
    assert len(await search(first, "parsnips", limit=1)) == 1
    assert await search(first, "turnips") == []
    await first.close()
    await second.close()


async def test_a_hostile_query_finds_the_literal_words_and_never_errs(
    database_url: str, app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    fake_llm.script(Reply(text="ok"))
    chat = await connect(app)
    await chat.ask('say "NEAR" (tea OR coffee) * AND col:umn')
    for query in ['"NEAR"', "NEAR(tea coffee)", "tea OR", "(tea", "coffee*", "col:umn",
                  'AND "', "NOT tea", '"', "*", "^tea", "-", "tea AND", "coffee)"]:
        hits = await search(chat, query)  # a syntax error would be an error frame instead
        assert [h["role"] for h in hits] in ([], ["user"]), (query, hits)
    assert len(await search(chat, "NEAR(tea coffee)")) == 1
    assert len(await search(chat, '"near" (tea')) == 1
    assert await search(chat, "NOT tea") == []  # both words, and "not" is not there
    assert await search(chat, "tea OR absent") == []  # OR is a word, not an operator
    # An empty query, or one that is not a search frame, is refused and says why.
    for bad in [{"type": "search", "query": "   "}, {"type": "search"},
                {"type": "search", "query": "x", "limit": 0},
                {"type": "search", "query": "x", "extra": 1}]:
        await chat.send_raw(bad)
        error = await frame_of(chat, "error")
        assert error["code"] == "bad_frame" and "nothing was changed" in error["message"]
    await chat.close()


async def test_a_deleted_conversation_is_gone_from_results_and_tool_results_never_show(
    database_url: str, app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    fake_llm.script(Reply(text="Kohlrabi is crisp."), Reply(text="Kohlrabi again."))
    chat = await connect(app)
    await chat.ask("Tell me about kohlrabi")
    kept = await connect(app)
    await kept.ask("and kohlrabi soup?")
    tid = ThreadId(kept.thread_id)
    await app.history.finish_turn(tid, None, [
        NewMessage("tool", "kohlrabi from a tool", tool_call_id="c1", name="read_file"),
        NewMessage("assistant", "hidden kohlrabi", visible=False)])
    assert len(await search(chat, "kohlrabi")) == 4  # the tool result and hidden row not
    await chat.send_raw({"type": "delete", "thread_id": chat.thread_id})
    await frame_of(kept, "conversation_deleted")
    hits = await search(kept, "kohlrabi")
    assert {h["thread_id"] for h in hits} == {kept.thread_id} and len(hits) == 2
    await chat.close()
    await kept.close()


async def test_a_matrix_rooms_message_is_found(app_factory: AppFactory, database_url: str) -> None:
    app = await app_factory()
    room = ThreadId("!room:example.org")
    await app.history.finish_turn(room, None, [NewMessage("user", "the rutabaga order"),
                                              NewMessage("assistant", "Ordered.")])
    chat = await connect(app)
    hits = await search(chat, "rutabaga")
    assert [(h["thread_id"], h["title"], h["room"]) for h in hits] == [(room, room, True)]
    assert marked(hits[0]) == ["rutabaga"]
    await chat.close()


async def test_an_upgrade_indexes_the_existing_history_and_the_verb_refuses_an_empty_query(
    tmp_path: Path,
) -> None:
    path = tmp_path / "conversation.db"
    old = await Database.open(path, [m for m in MIGRATIONS if m.number < 10])
    room = ThreadId("!room:example.org")
    await History(old).finish_turn(room, None, [
        NewMessage("user", "an old salsify question"),
        NewMessage("tool", "salsify in a tool result", tool_call_id="c", name="read_file"),
        NewMessage("assistant", "an old salsify answer")])
    await old.close()
    db = await Database.open(path)  # migration 10 runs on the history of the earlier run
    search = Search(db)
    hits = await search.search("salsify")
    assert [(h.role, parts(h.snippet)) for h in hits] == [
        ("assistant", [("an old ", False), ("salsify", True), (" answer", False)]),
        ("user", [("an old ", False), ("salsify", True), (" question", False)])]
    with pytest.raises(EmptyQuery, match="empty"):
        await search.search("  \n ")
    # A question cancelled while queued is stored as it was queued: never searchable.
    await db.write("INSERT INTO messages (thread_id, role, content, name, in_context, visible,"
                   " created_at) VALUES (?, 'user', 'salsify queued', 'cancelled', 0, 1, 0)",
                   (room,))
    assert len(await search.search("salsify")) == 2
    await db.close()
