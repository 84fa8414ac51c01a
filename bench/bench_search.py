"""Search over 100,000 messages: the ``search`` verb's time, and the page's whole answer.

The database is filled through the storage verbs the daemon uses (``Conversations.add``,
``History.finish_turn``: so the FTS5 index is kept by migration 10's triggers as in use):
1,000 web conversations and one Matrix room, 100 messages each (user and assistant
alternating, about 40 words, plus a tool result per exchange that is not indexed). Every
message holds "the"; "group<N>" is in the 100 messages of conversation N; "msg<N>" in one.
Commits are not synced while filling (synchronous=OFF: the fill's speed only).

Each query is timed ``--rounds`` times: the verb alone (``Search.search``, limit 20, through
aiosqlite as the daemon reads) and the ``search`` frame as the page gets it
(``ConversationFrames`` with the conversation titles), median and p95.

Usage:

    uv run python bench/bench_search.py [--messages 100000] [--rounds 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from common import report

from ganglion.bus import Bus
from ganglion.interfaces.web_conversations import ConversationFrames
from ganglion.messages import ThreadId
from ganglion.render import MarkdownRenderer
from ganglion.storage.conversations import Conversations
from ganglion.storage.db import Database
from ganglion.storage.history import History, NewMessage
from ganglion.storage.inbox import Inbox
from ganglion.storage.search import Search

WORDS = ["garden", "plan", "week", "list", "answer", "kitchen", "recipe", "train", "ticket",
         "letter", "budget", "email", "report", "meeting", "doctor", "weather", "river",
         "bread", "coffee", "music", "window", "paint", "shelf", "lamp", "book"]
QUERIES = {
    "common word (every message)": "the",
    "100 hits, newest first": "group7",
    "two words, one common": "group500 the",
    "one old message": "msg123",
    "no hit": "absentword",
    "hostile: (group7) \"the*": '(group7) "the*',
}


def text(rng: random.Random, n: int, group: int) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(36))
    return f"About the {words}: group{group} msg{n}."


async def fill(db: Database, messages: int) -> None:
    await db.write("PRAGMA synchronous = OFF")  # the fill's speed, not the file's size
    conversations, history = Conversations(db), History(db)
    rng = random.Random(1)
    per = 100
    n = 0
    for group in range(messages // per):
        tid = ThreadId("!room:example.org" if group == 0 else f"web_{group:032x}")
        if group:
            await conversations.add(tid, f"Conversation {group}")
        batch: list[NewMessage] = []
        for i in range(per):
            batch.append(NewMessage("user" if i % 2 == 0 else "assistant",
                                    text(rng, n, group)))
            if i % 2:
                batch.append(NewMessage("tool", "the tool result " * 10,
                                        tool_call_id=f"c{n}", name="read_file"))
            n += 1
        await history.finish_turn(tid, None, batch)
    await db.write("PRAGMA synchronous = FULL")


async def unused_handler(*_args: object) -> None:
    raise AssertionError("a search runs no turn")


def stats(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {"median_ms": round(statistics.median(times) * 1000, 2),
            "p95_ms": round(times[int(len(times) * 0.95) - 1] * 1000, 2)}


async def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=50)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        db = await Database.open(Path(tmp) / "conversation.db")
        started = time.perf_counter()
        await fill(db, args.messages)
        filled = time.perf_counter() - started
        history = History(db)
        verb = Search(db)
        frames = ConversationFrames(Conversations(db), history, Bus(Inbox(db), unused_handler, 1),
                                    MarkdownRenderer(), lambda _f: None)
        answers: list[dict[str, Any]] = []
        results: dict[str, Any] = {"messages": args.messages, "fill_s": round(filled, 1),
                                   "db_mib": round((Path(tmp) / "conversation.db")
                                                   .stat().st_size / 2**20, 1)}
        for name, query in QUERIES.items():
            alone, whole = [], []
            for _ in range(args.rounds):
                t0 = time.perf_counter()
                hits = await verb.search(query, 20)
                t1 = time.perf_counter()
                await frames.handle(answers.append, {"type": "search", "query": query})
                whole.append(time.perf_counter() - t1)
                alone.append(t1 - t0)
            assert answers[-1]["type"] == "search_results", answers[-1]
            results[name] = {"hits": len(hits), "verb": stats(alone), "frame": stats(whole)}
        await db.close()
    report(results, args.json)
    return results


if __name__ == "__main__":
    asyncio.run(main())
