"""Soak: many turns over many threads through the real daemon and WebSocket, zero-delay fake LLM.

Reports the daemon's RSS after the first 1,000 turns and at the end (target: within 20 MiB),
its open file descriptors at start and end, both idle (/proc/PID/fd: no leak; the start is
after a warm-up that fills the model client's connection pool), and the turn latency in
threads holding 1, 1,000 and 10,000 stored messages (pre-filled into the stopped daemon's
database, compacted as a long conversation would be: all but the last 20 out of context).
Usage:

    uv run python bench/soak.py [--turns 10000] [--threads 200] [--concurrency 50] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import os
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

from common import report, rss_mib, wait_port
from daemon import Daemon, free_port
from wsclient import ChatClient

TOKEN = "soak-token-0123456789"
HISTORY_SIZES = (1, 1_000, 10_000)
IN_CONTEXT = 20
"""Stored messages of a pre-filled thread still in the model's context (the rest compacted)."""
LATENCY_TURNS = 30


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def prefill(db: Path, sizes: tuple[int, ...]) -> dict[int, str]:
    """One thread per size holding that many messages; returns size -> thread id."""
    threads = {n: f"web_{n:032x}" for n in sizes}
    now = time.time()
    with sqlite3.connect(db) as conn:
        for n, tid in threads.items():
            conn.executemany(
                "INSERT INTO messages (thread_id, role, content, in_context, tokens, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(tid, "user" if i % 2 == 0 else "assistant",
                  f"stored message {i} of a long conversation, with a few more words in it",
                  int(i >= n - IN_CONTEXT), 16, now - (n - i)) for i in range(n)])
    conn.close()
    return threads


async def soak(url: str, pid: int, turns: int, threads: int, concurrency: int) -> dict[str, Any]:
    chats = [ChatClient(url, TOKEN) for _ in range(threads)]
    for c in chats:
        await c.connect()
    gate = asyncio.Semaphore(concurrency)
    done = 0
    marks: dict[str, Any] = {}
    times: list[float] = []
    started = time.perf_counter()

    async def conversation(i: int, c: ChatClient, n: int) -> None:
        nonlocal done
        for k in range(n):
            async with gate:
                t0 = time.perf_counter()
                reply = await c.ask(f"thread {i} turn {k}", timeout=120)
                times.append((time.perf_counter() - t0) * 1000)
            assert reply["text"] == f"echo: thread {i} turn {k}", reply
            done += 1
            if done == min(1_000, turns):
                marks["rss_after_1000_mib"] = rss_mib(pid)
                marks["fds_after_1000"] = fd_count(pid)

    per = [turns // threads + (1 if i < turns % threads else 0) for i in range(threads)]
    await asyncio.gather(*(conversation(i, c, n)
                           for i, (c, n) in enumerate(zip(chats, per, strict=True))))
    wall = time.perf_counter() - started
    await asyncio.gather(*(c.close() for c in chats))
    times.sort()
    return {**marks, "turns": done, "wall_s": round(wall, 1),
            "turns_per_s": round(done / wall, 1),
            "turn_median_ms": round(statistics.median(times), 1),
            "turn_p99_ms": round(times[max(0, int(len(times) * 0.99) - 1)], 1)}


async def warm_up(url: str, n: int) -> None:
    chats = [ChatClient(url, TOKEN) for _ in range(n)]
    await asyncio.gather(*(c.connect() for c in chats))
    for k in range(2):
        await asyncio.gather(*(c.ask(f"warm-up {k}", timeout=60) for c in chats))
    await asyncio.gather(*(c.close() for c in chats))


async def latency(url: str, thread_id: str) -> dict[str, float]:
    t0 = time.perf_counter()
    chat = ChatClient(url, TOKEN, thread_id)
    await chat.connect()  # hello -> ready carries the transcript (the last 500 messages)
    ready_ms = (time.perf_counter() - t0) * 1000
    times = []
    for i in range(LATENCY_TURNS):
        t0 = time.perf_counter()
        reply = await chat.ask(f"latency {i}")
        times.append((time.perf_counter() - t0) * 1000)
        assert reply["text"] == f"echo: latency {i}", reply
    await chat.close()
    times.sort()
    return {"ready_ms": round(ready_ms, 1), "turn_median_ms": round(statistics.median(times), 1),
            "turn_max_ms": round(times[-1], 1)}


async def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=10_000)
    ap.add_argument("--threads", type=int, default=200)
    ap.add_argument("--concurrency", type=int, default=50)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    llm_port = free_port()
    fake = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_llm.py"),
                             "--port", str(llm_port)], stdout=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="ganglion-soak-"))
    d = Daemon(work, {
        "llm": {"endpoints": [{"name": "fake", "base_url": f"http://127.0.0.1:{llm_port}/v1",
                               "max_concurrency": 64}], "model": "soak"},
        "web": {"token": TOKEN},
        "logging": {"level": "WARNING"},
        "paths": {"data_dir": "data", "log_dir": "logs"},
    })
    results: dict[str, Any] = {"turns_asked": args.turns, "threads": args.threads,
                               "concurrency": args.concurrency}
    try:
        await wait_port(llm_port)
        d.start()  # once, to create the database; then the long threads are stored into it
        await d.wait_ready()
        d.signal(signal.SIGTERM)
        await d.wait_exit(10)
        long_threads = prefill(work / "data" / "conversation.db", HISTORY_SIZES)
        d.start()
        await d.wait_ready()
        assert d.proc is not None
        pid = d.proc.pid
        # Warm-up (not counted): as many turns at once as the run will have, so the LLM
        # client's connection pool is as full at the start as it will be at the end.
        await warm_up(d.url, args.concurrency)
        await asyncio.sleep(1.0)
        results["rss_start_mib"] = round(rss_mib(pid), 1)
        results["fds_start"] = fd_count(pid)
        results.update(await soak(d.url, pid, args.turns, args.threads, args.concurrency))
        await asyncio.sleep(1.0)  # sockets of the closed tabs go away
        results["rss_end_mib"] = round(rss_mib(pid), 1)
        results["fds_end"] = fd_count(pid)
        results["rss_growth_after_1000_mib"] = round(
            results["rss_end_mib"] - results["rss_after_1000_mib"], 1)
        results["latency_by_stored_messages"] = {
            n: await latency(d.url, tid) for n, tid in long_threads.items()}
        d.signal(signal.SIGTERM)
        results["exit_code"] = await d.wait_exit(10)
        with sqlite3.connect(work / "data" / "conversation.db") as conn:
            results["messages_stored"] = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            results["inbox_not_done"] = conn.execute(
                "SELECT count(*) FROM inbox WHERE status != 'done'").fetchone()[0]
        conn.close()
    finally:
        d.kill()
        fake.terminate()
        fake.wait(5)
    report(results, args.json)
    return results


if __name__ == "__main__":
    asyncio.run(main())
