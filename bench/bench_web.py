"""Web turn benchmark: the real daemon, the real WebSocket, a zero-delay fake LLM.

Reports start-to-ready, idle RSS, median/p99 turn latency over sequential turns, and the wall
time (first and last reply) for N conversations at once. Usage:

    uv run python bench/bench_web.py [--turns 200] [--bursts 50,500] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from common import cpu_seconds, report, rss_mib, wait_port
from daemon import Daemon, free_port
from wsclient import ChatClient

TOKEN = "bench-token-0123456789"


async def sequential(url: str, turns: int) -> list[float]:
    chat = ChatClient(url, TOKEN)
    await chat.connect()
    for i in range(10):  # warm-up
        await chat.ask(f"warm {i}")
    times = []
    for i in range(turns):
        t0 = time.perf_counter()
        reply = await chat.ask(f"turn {i}")
        times.append((time.perf_counter() - t0) * 1000)
        assert reply["text"] == f"echo: turn {i}", reply
    await chat.close()
    return times


async def burst(url: str, n: int) -> dict[str, float]:
    chats = [ChatClient(url, TOKEN) for _ in range(n)]
    await asyncio.gather(*(c.connect() for c in chats))
    t0 = time.perf_counter()

    async def one(i: int, c: ChatClient) -> float:
        reply = await c.ask(f"hello {i}", timeout=120)
        assert reply["text"] == f"echo: hello {i}", reply
        return time.perf_counter() - t0

    done = await asyncio.gather(*(one(i, c) for i, c in enumerate(chats)))
    wall = time.perf_counter() - t0
    await asyncio.gather(*(c.close() for c in chats))
    return {"n": n, "wall_s": wall, "first_reply_s": min(done), "last_reply_s": max(done)}


async def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=200)
    ap.add_argument("--bursts", default="50,500")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    llm_port = free_port()
    fake = subprocess.Popen([sys.executable, str(ROOT / "tests" / "fake_llm.py"),
                             "--port", str(llm_port)])
    work = Path(tempfile.mkdtemp(prefix="ganglion-bench-"))
    d = Daemon(work, {
        # The default max_concurrency (4): FIFO admission lets the first replies out early.
        "llm": {"endpoints": [{"name": "fake", "base_url": f"http://127.0.0.1:{llm_port}/v1"}],
                "model": "bench"},
        "limits": {"messages_per_minute": None},
        "web": {"token": TOKEN},
        "logging": {"level": "WARNING"},
        "paths": {"data_dir": "data", "log_dir": "logs"},
    })
    results: dict[str, Any] = {}
    try:
        await wait_port(llm_port)
        t0 = time.monotonic()
        d.start()
        await wait_port(d.port)
        results["ready_s"] = time.monotonic() - t0
        assert d.proc is not None
        await asyncio.sleep(1.0)
        results["idle_rss_mib"] = rss_mib(d.proc.pid)
        cpu0 = cpu_seconds(d.proc.pid)
        times = await sequential(d.url, args.turns)
        results["turn_cpu_ms"] = (cpu_seconds(d.proc.pid) - cpu0) / (args.turns + 10) * 1000
        times.sort()
        results["turns"] = args.turns
        results["turn_median_ms"] = statistics.median(times)
        results["turn_p99_ms"] = times[max(0, int(len(times) * 0.99) - 1)]
        results["bursts"] = [await burst(d.url, int(n)) for n in args.bursts.split(",")]
        results["rss_after_mib"] = rss_mib(d.proc.pid)
        t1 = time.monotonic()
        d.signal(signal.SIGTERM)
        results["exit_code"] = await d.wait_exit(10)
        results["sigterm_exit_s"] = time.monotonic() - t1
    finally:
        d.kill()
        fake.terminate()
        fake.wait(5)
    report(results, args.json)
    return results


if __name__ == "__main__":
    asyncio.run(main())
