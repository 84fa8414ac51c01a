"""Web turn benchmark: the real daemon, the real WebSocket, a zero-delay fake LLM.

Reports start-to-ready, the first answered turn after spawn, idle RSS (once the start-up
probe is done), median/p99 turn latency over sequential turns, and the wall time (first and
last reply) for N conversations at once. Usage:

    uv run python bench/bench_web.py [--turns 200] [--bursts 50,500] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
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
from fake_llm import FakeLLM
from wsclient import ChatClient

TOKEN = "bench-token-0123456789"
PROBED = "models listed"
"""What the fake LLM prints when it served GET /models: the daemon's start-up probe."""


async def serve_fake_llm(port: int) -> None:
    """Run in its own process (as the tests' standalone fake LLM is), until terminated; says
    ``PROBED`` on stdout each time it served the model list."""
    fake = FakeLLM()
    await fake.start(port)
    for served in itertools.count(1):
        await fake.wait_until(lambda served=served: fake.model_lists >= served)  # type: ignore[misc]
        print(PROBED, flush=True)


async def watch_probes(stream: asyncio.StreamReader, seen: list[float]) -> None:
    """The time of each GET /models the fake LLM served."""
    while line := await stream.readline():
        if line.decode().strip() == PROBED:
            seen.append(time.monotonic())


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
    fake = await asyncio.create_subprocess_exec(
        sys.executable, __file__, "--serve-fake-llm", str(llm_port), stdout=subprocess.PIPE)
    assert fake.stdout is not None
    probes: list[float] = []
    watcher = asyncio.create_task(watch_probes(fake.stdout, probes))
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
        # A person opening the page at once: the first turn may wait for the model client,
        # which the daemon imports in a thread once ready.
        first = ChatClient(d.url, TOKEN)
        await first.connect()
        assert (await first.ask("first", timeout=30))["text"] == "echo: first"
        results["first_turn_s"] = time.monotonic() - t0
        await first.close()
        # Idle means after the start-up probe (the openai import and GET /models), whose
        # memory would otherwise be missing from the figure.
        while not probes:
            if time.monotonic() - t0 > 30:
                raise TimeoutError("the daemon never probed the LLM endpoint")
            await asyncio.sleep(0.02)
        results["probe_done_s"] = probes[0] - t0
        await asyncio.sleep(1.0)  # its log line and catalog write, then quiet
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
        await fake.wait()
        watcher.cancel()
    report(results, args.json)
    return results


if __name__ == "__main__":
    if sys.argv[1:2] == ["--serve-fake-llm"]:
        asyncio.run(serve_fake_llm(int(sys.argv[2])))
    else:
        asyncio.run(main())
