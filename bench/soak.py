"""Soak: many turns over many threads through the real daemon and WebSocket, zero-delay fake LLM.

Checks, and exits 1 printing FAIL when one does not hold:

- memory: RSS at the end within 20 MiB of RSS after the first 1,000 turns. Both readings are
  taken alike: every turn answered, the same 200 tabs connected, after a 2 s settle;
- file descriptors: no growth from start to end, counted idle (no tab connected, after a
  warm-up that fills the model client's connection pool) and again with the 200 tabs
  connected after 1,000 turns and at the end. The model client's keep-alive connections
  (to the fake LLM's port) open and close by themselves, so they are counted apart: every
  other descriptor must not grow at all, and those stay within the endpoint's cap;
- every message answered: each reply checked, and no inbox row left undone;
- history queries stay fast as threads grow: the median turn in a thread holding 10,000
  messages whose context is not cached at most 3 times that in a thread holding one;
- a clean stop: exit status 0 at the final SIGTERM.

It also reports turn latency in threads holding 1, 1,000 and 10,000 stored messages
(pre-filled into the stopped daemon's database, compacted as a long conversation would be:
all but the last 20 out of context), both for a thread whose context is in the daemon's
in-memory cache (30 turns in a row in one thread) and for threads that are not (the first
turn in each of 10 such threads per size, in a freshly started daemon: the context comes
from SQLite). Usage:

    uv run python bench/soak.py [--turns 10000] [--threads 200] [--concurrency 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "bench"))

from common import fd_census, report, rss_mib, wait_port
from daemon import Daemon, free_port
from wsclient import ChatClient

TOKEN = "soak-token-0123456789"
HISTORY_SIZES = (1, 1_000, 10_000)
LONG_THREADS = 10
"""Pre-filled threads per size: each gives one turn whose context is not cached."""
IN_CONTEXT = 20
"""Stored messages of a pre-filled thread still in the model's context (the rest compacted)."""
LATENCY_TURNS = 30
FIRST_MARK = 1_000
RSS_GROWTH_MAX_MIB = 20.0
SETTLE_SECONDS = 2.0
MODEL_CONCURRENCY = 64
LATENCY_GROWTH_MAX = 3.0
"""Uncached median turn at 10,000 stored messages over that at 1: above it, the history
query grows with the thread (a full scan, a lost index)."""


def prefill(db: Path) -> dict[int, list[str]]:
    """LONG_THREADS threads per size holding that many messages; returns size -> thread ids."""
    threads = {n: [f"web_{n:016x}{k:016x}" for k in range(LONG_THREADS)] for n in HISTORY_SIZES}
    now = time.time()
    with sqlite3.connect(db) as conn:
        for n, tids in threads.items():
            for tid in tids:
                conn.executemany(
                    "INSERT INTO messages (thread_id, role, content, in_context, tokens,"
                    " created_at) VALUES (?, ?, ?, ?, ?, ?)",
                    [(tid, "user" if i % 2 == 0 else "assistant",
                      f"stored message {i} of a long conversation, with a few more words in it",
                      int(i >= n - IN_CONTEXT), 16, now - (n - i)) for i in range(n)])
    conn.close()
    return threads


def summary(times: list[float]) -> dict[str, float]:
    times = sorted(times)
    return {"median_ms": round(statistics.median(times), 1), "max_ms": round(times[-1], 1)}


async def idle_reading(pid: int, llm_port: int) -> dict[str, Any]:
    await asyncio.sleep(SETTLE_SECONDS)
    fds = fd_census(pid, llm_port)
    return {"rss_mib": round(rss_mib(pid), 1), "fds": fds["total"],
            "fds_to_model": fds["to_peer"], "fds_other": fds["total"] - fds["to_peer"]}


class Soak:
    """200 tabs connected once; turns run in two phases so both readings are taken alike."""

    def __init__(self, url: str, threads: int, concurrency: int) -> None:
        self.chats = [ChatClient(url, TOKEN) for _ in range(threads)]
        self.gate = asyncio.Semaphore(concurrency)
        self.times: list[float] = []
        self.answered = 0
        self.wrong: list[str] = []

    async def turns(self, first: int, count: int) -> None:
        """Turns ``first`` .. ``first + count - 1``, round robin over the threads."""
        per: dict[int, list[int]] = {}
        for k in range(first, first + count):
            per.setdefault(k % len(self.chats), []).append(k)

        async def conversation(i: int, ks: list[int]) -> None:
            for k in ks:
                text = f"thread {i} turn {k}"
                try:
                    async with self.gate:
                        t0 = time.perf_counter()
                        reply = await self.chats[i].ask(text, timeout=120)
                        self.times.append((time.perf_counter() - t0) * 1000)
                except (TimeoutError, ConnectionError, AssertionError) as err:
                    self.wrong.append(f"{text}: {err!r}")
                    continue
                if reply.get("text") == f"echo: {text}":
                    self.answered += 1
                else:
                    self.wrong.append(f"{text}: {reply}")

        await asyncio.gather(*(conversation(i, ks) for i, ks in per.items()))


async def warm_up(url: str, n: int) -> None:
    chats = [ChatClient(url, TOKEN) for _ in range(n)]
    await asyncio.gather(*(c.connect() for c in chats))
    for k in range(2):
        await asyncio.gather(*(c.ask(f"warm-up {k}", timeout=60) for c in chats))
    await asyncio.gather(*(c.close() for c in chats))


async def cached_latency(url: str, thread_id: str) -> dict[str, float]:
    """Turns in a row in one thread: from the second on, its context is in the cache."""
    chat = ChatClient(url, TOKEN, thread_id)
    await chat.connect()
    times = []
    for i in range(LATENCY_TURNS + 1):
        t0 = time.perf_counter()
        reply = await chat.ask(f"latency {i}")
        times.append((time.perf_counter() - t0) * 1000)
        assert reply["text"] == f"echo: latency {i}", reply
    await chat.close()
    return summary(times[1:])


async def uncached_latency(url: str, threads: dict[int, list[str]]) -> dict[int, Any]:
    """In a fresh daemon: the first turn in each pre-filled thread (its context read from
    SQLite), sizes interleaved; plus hello to ``ready`` (the transcript, its last 500)."""
    warm = ChatClient(url, TOKEN)  # the model connection and the code paths, not a long thread
    await warm.connect()
    await warm.ask("warm")
    await warm.close()
    turn: dict[int, list[float]] = {n: [] for n in threads}
    ready: dict[int, list[float]] = {n: [] for n in threads}
    for k in range(LONG_THREADS):
        for n, tids in threads.items():
            chat = ChatClient(url, TOKEN, tids[k])
            t0 = time.perf_counter()
            await chat.connect()
            ready[n].append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            reply = await chat.ask("not cached")
            turn[n].append((time.perf_counter() - t0) * 1000)
            assert reply["text"] == "echo: not cached", reply
            await chat.close()
    return {n: {"turn": summary(turn[n]), "ready": summary(ready[n])} for n in threads}


def verdict(r: dict[str, Any]) -> list[str]:
    """What failed, in words; empty when the soak passed."""
    failed = []
    growth = r["at_end"]["rss_mib"] - r["after_1000"]["rss_mib"]
    if growth > RSS_GROWTH_MAX_MIB:
        failed.append(f"RSS grew {growth:.1f} MiB from 1,000 turns to the end "
                      f"(limit {RSS_GROWTH_MAX_MIB:g})")
    for before, after in (("start", "end_idle"), ("after_1000", "at_end")):
        if r[after]["fds_other"] > r[before]["fds_other"]:
            failed.append(f"file descriptors other than model connections grew from "
                          f"{r[before]['fds_other']} ({before}) to {r[after]['fds_other']} "
                          f"({after})")
        if r[after]["fds_to_model"] > MODEL_CONCURRENCY:
            failed.append(f"{r[after]['fds_to_model']} model connections ({after}), more "
                          f"than the endpoint's cap of {MODEL_CONCURRENCY}")
    if r["unanswered"] or r["inbox_not_done"]:
        failed.append(f"{r['unanswered']} of {r['turns_asked']} turns unanswered or wrong, "
                      f"{r['inbox_not_done']} inbox rows not done; first: {r['wrong'][:3]}")
    growth_x = r["uncached_growth_x"]
    if growth_x > LATENCY_GROWTH_MAX:
        small, big = HISTORY_SIZES[0], HISTORY_SIZES[-1]
        failed.append(
            f"an uncached turn in a thread of {big:,} messages took {growth_x:.1f} times as "
            f"long as in a thread of {small} (median "
            f"{r['uncached_latency'][big]['turn']['median_ms']} ms against "
            f"{r['uncached_latency'][small]['turn']['median_ms']} ms; limit "
            f"{LATENCY_GROWTH_MAX:g} times): history queries slow down as threads grow")
    if r["exit_code"] is None:
        failed.append("the daemon did not exit within 10 s of the final SIGTERM")
    elif r["exit_code"] != 0:
        failed.append(f"the daemon exited with status {r['exit_code']} at the final SIGTERM "
                      "(0 expected)")
    return failed


async def run(args: argparse.Namespace, llm_port: int, work: Path) -> dict[str, Any]:
    d = Daemon(work, {
        "llm": {"endpoints": [{"name": "fake", "base_url": f"http://127.0.0.1:{llm_port}/v1",
                               "max_concurrency": MODEL_CONCURRENCY}], "model": "soak"},
        "web": {"token": TOKEN},
        "logging": {"level": "WARNING"},
        "paths": {"data_dir": "data", "log_dir": "logs"},
    })
    r: dict[str, Any] = {"turns_asked": args.turns, "threads": args.threads,
                         "concurrency": args.concurrency}
    try:
        d.start()  # once, to create the database; then the long threads are stored into it
        await d.wait_ready()
        d.signal(signal.SIGTERM)
        await d.wait_exit(10)
        long_threads = prefill(work / "data" / "conversation.db")
        d.start()
        await d.wait_ready()
        assert d.proc is not None
        pid = d.proc.pid
        # Not counted: as many turns at once as the run will have, so the model client's
        # connection pool is as full at the start as it will be at the end.
        await warm_up(d.url, args.concurrency)
        r["start"] = await idle_reading(pid, llm_port)
        soak = Soak(d.url, args.threads, args.concurrency)
        await asyncio.gather(*(c.connect() for c in soak.chats))
        first = min(FIRST_MARK, args.turns)
        t0 = time.perf_counter()
        await soak.turns(0, first)
        wall = time.perf_counter() - t0
        r["after_1000"] = await idle_reading(pid, llm_port)
        t0 = time.perf_counter()
        await soak.turns(first, args.turns - first)
        wall += time.perf_counter() - t0
        r["at_end"] = await idle_reading(pid, llm_port)
        r["under_load_wall_s"] = round(wall, 1)
        r["turns_per_s"] = round(soak.answered / wall, 1)
        r["turn_under_load"] = summary(soak.times)
        await asyncio.gather(*(c.close() for c in soak.chats))
        r["end_idle"] = await idle_reading(pid, llm_port)
        r["rss_growth_after_1000_mib"] = round(
            r["at_end"]["rss_mib"] - r["after_1000"]["rss_mib"], 1)
        r["unanswered"] = args.turns - soak.answered
        r["wrong"] = soak.wrong[:10]
        r["cached_latency"] = {n: await cached_latency(d.url, tids[0])
                               for n, tids in long_threads.items()}
        d.signal(signal.SIGTERM)  # a fresh process: no thread's context is cached
        await d.wait_exit(10)
        d.start()
        await d.wait_ready()
        r["uncached_latency"] = await uncached_latency(
            d.url, {n: tids[1:] + tids[:1] for n, tids in long_threads.items()})
        uncached = r["uncached_latency"]
        r["uncached_growth_x"] = round(
            uncached[HISTORY_SIZES[-1]]["turn"]["median_ms"]
            / max(uncached[HISTORY_SIZES[0]]["turn"]["median_ms"], 0.1), 2)
        d.signal(signal.SIGTERM)
        try:
            r["exit_code"] = await d.wait_exit(10)
        except TimeoutError:
            r["exit_code"] = None  # killed below; the verdict says so
        with sqlite3.connect(work / "data" / "conversation.db") as conn:
            r["messages_stored"] = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            r["inbox_not_done"] = conn.execute(
                "SELECT count(*) FROM inbox WHERE status != 'done'").fetchone()[0]
        conn.close()
    finally:
        d.kill()
    return r


async def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    llm_port = free_port()
    fake = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_llm.py"),
                             "--port", str(llm_port)], stdout=subprocess.DEVNULL)
    try:
        await wait_port(llm_port)
        results = await run(args, llm_port, Path(tempfile.mkdtemp(prefix="ganglion-soak-")))
    finally:
        fake.terminate()
        fake.wait(5)
    failed = verdict(results)
    results["verdict"] = "FAIL" if failed else "PASS"
    results["failures"] = failed
    report(results, args.json)
    for line in failed:
        print(f"FAIL: {line}")
    print("soak:", results["verdict"])
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
