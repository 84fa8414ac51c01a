"""`ganglion backup` of a database with ~100,000 messages: how long it takes, and the median
web turn while backups run against the turn without one, in one run.

The database is a year of daily use filled as bench_year.py fills it (its ``fill``); the
real daemon runs on a copy, on the fake LLM. Turns: one tab, one message after another,
send to final answer. During the second series `ganglion backup` runs again and again in a
child process (a new archive each time), as a person's cron job would, only far more often.

Usage:

    uv run python bench/bench_backup.py [--days 365] [--turns 100] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from bench_year import fill
from common import report
from daemon import Daemon
from fake_llm import FakeLLM

TOKEN = "bench-backup-token-0123456789"


async def turns(daemon: Daemon, count: int) -> list[float]:
    chat = await daemon.connect()
    seconds = []
    for i in range(count):
        started = time.perf_counter()
        reply = await chat.ask(f"turn {i}", timeout=30)
        seconds.append(time.perf_counter() - started)
        assert reply["role"] == "assistant", reply
    await chat.close()
    return seconds


def backup_once(config: Path, target: Path) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "ganglion", "--config", str(config), "backup",
                           str(target)], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr)
    target.unlink()
    return time.perf_counter() - started


async def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--turns", type=int, default=100)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ganglion-bench-backup-"))
    (work / "data").mkdir()
    filled = await fill(work / "data" / "conversation.db", args.days, prune=False)
    llm = FakeLLM(models=["bench"])
    await llm.start()
    daemon = Daemon(work, {
        "llm": {"endpoints": [{"name": "fake", "base_url": llm.base_url}], "model": "bench"},
        "web": {"token": TOKEN}, "paths": {"data_dir": "data", "log_dir": "logs"},
        "heartbeat": {"enabled": False}, "storage": {"keep_days": None},
    })
    results: dict[str, Any] = {"rows": filled["rows"], "size_mib": filled["size_mib"]}
    try:
        daemon.start()
        await daemon.wait_ready(120)
        await turns(daemon, 10)  # warm
        quiet = await turns(daemon, args.turns)
        results["backup_alone_s"] = [round(await asyncio.to_thread(
            backup_once, daemon.config_path, work / "alone.tar.gz"), 2) for _ in range(3)]
        stop = asyncio.Event()
        during: list[float] = []

        async def keep_backing_up() -> None:
            n = 0
            while not stop.is_set():
                during.append(await asyncio.to_thread(
                    backup_once, daemon.config_path, work / f"b{n}.tar.gz"))
                n += 1

        backups = asyncio.create_task(keep_backing_up())
        busy = await turns(daemon, args.turns)
        stop.set()
        await backups
        results["median_turn_ms"] = {
            "no_backup": round(statistics.median(quiet) * 1000, 2),
            "backups_running": round(statistics.median(busy) * 1000, 2)}
        results["max_turn_ms"] = {"no_backup": round(max(quiet) * 1000, 1),
                                  "backups_running": round(max(busy) * 1000, 1)}
        results["backups_during_turns"] = {"count": len(during),
                                           "seconds": [round(s, 2) for s in during]}
        await daemon.stop(10)
    finally:
        daemon.kill()
        await llm.stop()
        shutil.rmtree(work, ignore_errors=True)
    report(results, args.json)
    return results


if __name__ == "__main__":
    asyncio.run(main())
