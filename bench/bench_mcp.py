"""MCP benchmark: what two configured MCP servers cost a turn that uses none, and start-up.

In one run, the real daemon in turn without MCP servers and with two stdio servers (the test
server, tests/mcp_server.py), ``--rounds`` times each, alternating (so the machine's drift
falls on both alike), on the zero-delay fake LLM of bench_web.py. Per daemon: spawn to READY
(the notify socket; the servers connect after it, in the background), spawn to both
servers' tools listed by ``/tools``, idle RSS then, and the median of ``--turns`` sequential
turns with their daemon CPU. Usage:

    uv run python bench/bench_mcp.py [--turns 200] [--rounds 2] [--json out.json]
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

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bench_web import TOKEN, sequential
from common import cpu_seconds, report, rss_mib, wait_port
from daemon import Daemon, free_port
from wsclient import ChatClient

SERVER = str(ROOT / "tests" / "mcp_server.py")


def config(llm_port: int, servers: int) -> dict[str, Any]:
    return {
        "llm": {"endpoints": [{"name": "fake", "base_url": f"http://127.0.0.1:{llm_port}/v1"}],
                "model": "bench"},
        "limits": {"messages_per_minute": None},
        "web": {"token": TOKEN},
        "logging": {"level": "WARNING"},
        "paths": {"data_dir": "data", "log_dir": "logs"},
        "mcp": {"servers": {f"s{i}": {"command": sys.executable, "args": [SERVER]}
                            for i in range(servers)}},
    }


async def one(llm_port: int, servers: int, turns: int) -> dict[str, Any]:
    d = Daemon(Path(tempfile.mkdtemp(prefix="ganglion-bench-mcp-")), config(llm_port, servers))
    out: dict[str, Any] = {"servers": servers}
    try:
        t0 = time.monotonic()
        d.start()
        await d.wait_ready()
        out["ready_s"] = time.monotonic() - t0
        chat = ChatClient(d.url, TOKEN)
        await chat.connect()
        # Each test server offers 10 tools; /tools is all that tells from outside.
        while (servers and  # noqa: ASYNC110
               (await chat.ask("/tools"))["text"].count(", connected") < servers * 10):
            await asyncio.sleep(0.05)
        out["tools_listed_s"] = time.monotonic() - t0
        await chat.close()
        await asyncio.sleep(1.0)  # the start-up probe and its log line, then quiet
        assert d.proc is not None
        out["idle_rss_mib"] = rss_mib(d.proc.pid)
        cpu0 = cpu_seconds(d.proc.pid)
        times = await sequential(d.url, turns)
        out["turn_cpu_ms"] = (cpu_seconds(d.proc.pid) - cpu0) / (turns + 10) * 1000
        out["turn_median_ms"] = statistics.median(times)
        t1 = time.monotonic()
        out["exit_code"] = await d.stop(10)
        out["sigterm_exit_s"] = time.monotonic() - t1
    finally:
        d.kill()
    return out


async def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--turns", type=int, default=200)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    llm_port = free_port()
    fake = await asyncio.create_subprocess_exec(
        sys.executable, str(ROOT / "bench" / "bench_web.py"), "--serve-fake-llm",
        str(llm_port), stdout=subprocess.DEVNULL)
    runs: list[dict[str, Any]] = []
    try:
        await wait_port(llm_port)
        for _ in range(args.rounds):
            for servers in (0, 2):
                runs.append(await one(llm_port, servers, args.turns))
    finally:
        fake.terminate()
        await fake.wait()
    results: dict[str, Any] = {"turns": args.turns, "runs": runs}
    for servers in (0, 2):
        mine = [r for r in runs if r["servers"] == servers]
        results[f"turn_median_ms_{servers}"] = [round(r["turn_median_ms"], 2) for r in mine]
        results[f"ready_s_{servers}"] = [round(r["ready_s"], 3) for r in mine]
    report(results, args.json)
    return results


if __name__ == "__main__":
    asyncio.run(main())
