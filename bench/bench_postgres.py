"""SQLite next to PostgreSQL: the web turn through the real daemon, and the storage verbs on
a database holding 1x, 10x and 100x a year of use.

Web: bench_web.py's measure (a zero-delay fake LLM, the real WebSocket), once per backend:
median and p99 of sequential turns, then N conversations at once (first and last reply).
PostgreSQL is the tests' throw-away cluster (tests/pg_cluster.py: local, over TCP), with
its commits synced to disk as SQLite's are (synchronous=FULL).

Storage: each database is filled in bulk with SCALE x a year of bench_year.py's volume
(50 turns a day, a user message and an answer each, 20 a day in a new web conversation,
30 in one Matrix room), then the storage path of one turn is timed (inbox.add, begin_turn,
context, finish_turn, outbox pending + delivered), the transcript of the long-lived room,
a search for a rare and for a common word, and the conversation list.

Usage:

    uv run python bench/bench_postgres.py [--turns 200] [--bursts 50,500] [--scales 1,10,100]
                                          [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from bench_web import TOKEN, burst, sequential
from common import report, wait_port
from daemon import Daemon, free_port
from pg_cluster import Cluster, start_cluster

from ganglion.messages import Inbound, Source, ThreadId
from ganglion.storage.backend import Backend
from ganglion.storage.connect import open_database
from ganglion.storage.conversations import Conversations
from ganglion.storage.history import History, NewMessage
from ganglion.storage.inbox import Inbox
from ganglion.storage.outbox import Outbox
from ganglion.storage.search import Search

DAYS = 365
ROOM = ThreadId("!bench-room:example.org")
WORDS = ["the", "plan", "for", "tomorrow", "is", "to", "water", "the", "garden", "and",
         "call", "the", "bakery", "about", "bread", "then", "read", "a", "chapter", "and",
         "write", "down", "what", "the", "week", "brought"]


async def web(url: str | None, turns: int, bursts: list[int]) -> dict[str, Any]:
    """bench_web.py's turns and bursts on the daemon, on ``url`` (None: SQLite)."""
    llm_port = free_port()
    fake = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "bench_web.py"), "--serve-fake-llm",
        str(llm_port), stdout=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="ganglion-bench-pg-"))
    config: dict[str, Any] = {
        "llm": {"endpoints": [{"name": "fake", "base_url": f"http://127.0.0.1:{llm_port}/v1"}],
                "model": "bench"},
        "limits": {"messages_per_minute": None},
        "web": {"token": TOKEN},
        "logging": {"level": "WARNING"},
        "paths": {"data_dir": "data", "log_dir": "logs"},
    }
    if url:
        config["database"] = {"url": url}
    d = Daemon(work, config)
    try:
        await wait_port(llm_port)
        d.start()
        await d.wait_ready(60)
        times = sorted(await sequential(d.url, turns))
        out: dict[str, Any] = {
            "turn_median_ms": statistics.median(times),
            "turn_p99_ms": times[max(0, int(len(times) * 0.99) - 1)],
            "bursts": [await burst(d.url, n) for n in bursts]}
        await d.stop(30)
        return out
    finally:
        d.kill()
        fake.terminate()
        await fake.wait()


async def fill(db: Backend, scale: int) -> int:
    """SCALE years of turns, in bulk (the rows the verbs would write, fewer round trips)."""
    now = time.time() - DAYS * scale * 86_400
    turns = 0
    for day in range(DAYS * scale):
        at = now + day * 86_400
        web_tid = f"web_{day:032x}"
        inbox, messages = [], []
        for n in range(50):
            tid = web_tid if n < 20 else ROOM
            text = " ".join(WORDS[(day + n + k) % len(WORDS)] for k in range(12))
            if n == 7:
                text += f" rareword{day}"
            inbox.append((tid, f"d{day}n{n}", "web" if n < 20 else "matrix", "someone",
                          text, 0, "{}", "done", at + n, at + n + 1))
            messages.append((tid, text, at + n, "answer: " + text, at + n + 1))
            turns += 1
        async with db.transaction() as conn:
            await conn.executemany(
                "INSERT INTO inbox (thread_id, client_id, source, sender, text, system, meta,"
                " status, created_at, done_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", inbox)
            await conn.executemany(
                "INSERT INTO messages (thread_id, role, content, tokens, created_at)"
                " VALUES (?, 'user', ?, 20, ?)", [(m[0], m[1], m[2]) for m in messages])
            await conn.executemany(
                "INSERT INTO messages (thread_id, role, content, tokens, created_at)"
                " VALUES (?, 'assistant', ?, 20, ?)", [(m[0], m[3], m[4]) for m in messages])
            await conn.execute(
                "INSERT INTO conversations (thread_id, title, created_at, last_active)"
                " VALUES (?, 'a day', ?, ?)", (web_tid, at, at))
    return turns


async def timed(n: int, work: Callable[[int], Awaitable[object]]) -> float:
    """Median milliseconds of ``work(i)`` over ``n`` runs."""
    times = []
    for i in range(n):
        t0 = time.perf_counter()
        await work(i)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


async def storage(url: str, data: Path, scale: int, turns: int) -> dict[str, Any]:
    db = await open_database(url, data, "bench")
    try:
        t0 = time.perf_counter()
        filled = await fill(db, scale)
        if db.dialect == "postgres":  # the statistics autovacuum keeps, taken now
            await db.write("ANALYZE")
        out: dict[str, Any] = {"scale": scale, "turns_stored": filled,
                               "fill_s": round(time.perf_counter() - t0, 1)}
        inbox, history, outbox = Inbox(db), History(db), Outbox(db)
        tid = ThreadId("web_" + "f" * 32)

        async def turn(i: int) -> None:
            msg, _ = await inbox.add(Inbound(tid, f"question {i}", "web", Source.WEB, f"q{i}"))
            await history.begin_turn(msg, msg.text)
            await history.context(tid)
            await history.finish_turn(tid, msg.id, [NewMessage("assistant", f"answer {i}",
                                                               deliver=True)])
            await outbox.mark_delivered([o for o, _ in await outbox.pending(tid)])

        out["turn_storage_ms"] = await timed(turns, turn)
        out["transcript_ms"] = await timed(50, lambda i: History(db).transcript(ROOM))
        search = Search(db)
        out["search_rare_ms"] = await timed(50, lambda i: search.search(f"rareword{i}"))
        out["search_common_ms"] = await timed(50, lambda i: search.search("garden bread"))
        out["conversations_ms"] = await timed(10, lambda i: Conversations(db).listed())
        return out
    finally:
        await db.close()


async def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=200)
    ap.add_argument("--bursts", default="50,500")
    ap.add_argument("--scales", default="1,10,100")
    ap.add_argument("--skip-web", action="store_true")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    bursts = [int(n) for n in args.bursts.split(",")]
    cluster: Cluster = start_cluster(durable=True)  # commits synced, as SQLite's
    results: dict[str, Any] = {}
    try:
        if not args.skip_web:
            results["web_sqlite"] = await web(None, args.turns, bursts)
            results["web_postgres"] = await web(cluster.new_database(), args.turns, bursts)
        for scale in (int(s) for s in args.scales.split(",")):
            work = Path(tempfile.mkdtemp(prefix="ganglion-bench-store-"))
            results[f"storage_sqlite_{scale}x"] = await storage(
                f"sqlite:///{work / 'bench.db'}", work, scale, args.turns)
            results[f"storage_postgres_{scale}x"] = await storage(
                cluster.new_database(), work, scale, args.turns)
            report(results, None)
    finally:
        cluster.close()
    report(results, args.json)
    return results


if __name__ == "__main__":
    asyncio.run(main())
