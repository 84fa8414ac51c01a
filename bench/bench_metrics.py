"""/metrics latency: the real daemon after a few hundred turns, scraped 1,000 times.

The daemon is a child process, the zero-delay fake LLM another (bench_web.py's). After
``--turns`` turns spread over ``--conversations`` conversations, it times ``--scrapes``
sequential GETs of /metrics over one keep-alive connection, on the web port with the token
and on the loopback listener (``web.metrics_bind``) without, and of /status; the figure is
the whole round trip as a scraper sees it. It also times, in this process, what one turn
adds to the daemon's work: the callbacks a turn makes (``turn_done``, ``llm_call``,
``charged``). Usage:

    uv run python bench/bench_metrics.py [--turns 300] [--scrapes 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from common import report, wait_port
from daemon import Daemon, free_port
from prometheus_client.parser import text_string_to_metric_families
from wsclient import ChatClient

from ganglion.metrics import Metrics

TOKEN = "bench-token-0123456789"


async def turns(url: str, n: int, conversations: int) -> None:
    chats = [ChatClient(url, TOKEN) for _ in range(conversations)]
    for chat in chats:
        await chat.connect()
    for i in range(n):
        reply = await chats[i % conversations].ask(f"turn {i}")
        assert reply["text"] == f"echo: turn {i}", reply
    for chat in chats:
        await chat.close()


async def timed_gets(url: str, n: int, headers: dict[str, str]) -> tuple[dict[str, float], str]:
    """Median and p99 (ms) of ``n`` sequential GETs, and the last body."""
    times = []
    body = ""
    async with aiohttp.ClientSession(headers=headers) as http:
        for _ in range(n):
            t0 = time.perf_counter()
            async with http.get(url) as resp:
                body = await resp.text()
                assert resp.status == 200, (resp.status, body)
            times.append((time.perf_counter() - t0) * 1000)
    times.sort()
    return {"median_ms": statistics.median(times),
            "p99_ms": times[max(0, int(len(times) * 0.99) - 1)],
            "max_ms": times[-1]}, body


def callbacks_per_turn_us(n: int = 100_000) -> float:
    """Microseconds of the metric updates one turn with one LLM call makes."""
    metrics = Metrics()
    t0 = time.perf_counter()
    for _ in range(n):
        metrics.turn_done(0.012)
        metrics.llm_call("fake", 0.008)
        metrics.charged("web", 120)
    return (time.perf_counter() - t0) / n * 1e6


async def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=300)
    ap.add_argument("--conversations", type=int, default=5)
    ap.add_argument("--scrapes", type=int, default=1000)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    llm_port, metrics_port = free_port(), free_port()
    fake = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "bench_web.py"), "--serve-fake-llm", str(llm_port),
        stdout=subprocess.DEVNULL)
    work = Path(tempfile.mkdtemp(prefix="ganglion-bench-metrics-"))
    d = Daemon(work, {
        "llm": {"endpoints": [{"name": "fake", "base_url": f"http://127.0.0.1:{llm_port}/v1"}],
                "model": "bench"},
        "limits": {"messages_per_minute": None},
        "web": {"token": TOKEN, "metrics_bind": f"127.0.0.1:{metrics_port}"},
        "logging": {"level": "WARNING"},
        "paths": {"data_dir": "data", "log_dir": "logs"},
    })
    results: dict[str, Any] = {"turns": args.turns, "scrapes": args.scrapes,
                               "callbacks_per_turn_us": callbacks_per_turn_us()}
    try:
        await wait_port(llm_port)
        d.start()
        await d.wait_ready()
        await turns(d.url, args.turns, args.conversations)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        results["metrics_web_port"], body = await timed_gets(
            f"{d.url}/metrics", args.scrapes, auth)
        results["metrics_loopback_listener"], _ = await timed_gets(
            f"http://127.0.0.1:{metrics_port}/metrics", args.scrapes, {})
        results["status"], _ = await timed_gets(f"{d.url}/status", args.scrapes // 10, auth)
        samples = {s.name: s.value for f in text_string_to_metric_families(body)
                   for s in f.samples if not s.labels}
        results["turns_counted"] = samples["ganglion_turn_seconds_count"]
        results["metrics_bytes"] = len(body)
    finally:
        d.kill()
        fake.terminate()
        await fake.wait()
    report(results, args.json)
    return results


if __name__ == "__main__":
    asyncio.run(main())
