"""Reminder benchmark: the real daemon, reminders stored beforehand, a browser tab on the WebSocket.

1. Start with N pending reminders (0, 1,000, 100,000: one-shots, intervals and crons in the
   future): how long loading and scheduling them takes (the daemon's own log line) and the
   daemon's start-to-ready time. Target: 1,000 in < 1 s.
2. Missed while stopped: N recurring reminders (per-minute crons and one-minute intervals)
   whose time came a day ago, so each missed 1,440 runs: how long the start takes to fire
   each once (marked late, with its count) and move it to its next time. Target: 1,000 in
   < 1 s.
3. Firing: with 1,000 others pending, the model (the fake LLM) sets 20 reminders due 0.1 s
   apart and 100 due at one instant, for a connected tab: lateness = arrival at the tab -
   due time.
   Target: each within 1 s of its time.

The figures are printed as JSON, then one PASS or FAIL line per target.

Usage:

    uv run python bench/bench_reminders.py [--sizes 0,1000,100000] [--missed 1000] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sqlite3
import statistics
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from common import report
from daemon import Daemon
from fake_llm import FakeLLM, Reply
from wsclient import ChatClient

from ganglion.messages import ThreadId
from ganglion.storage.db import Database
from ganglion.storage.reminders import NewReminder, ReminderStore

TOKEN = "bench-token-0123456789"
TZ = "Europe/Berlin"
SCHEDULED = re.compile(r"reminders: (\d+) active, scheduled in ([\d.]+) ms")
READY = re.compile(r"ready in ([\d.]+) s")


def background(n: int, now: float) -> list[NewReminder]:
    """``n`` reminders in the future, of every kind, in 50 conversations."""
    out = []
    for i in range(n):
        tid = ThreadId(f"web_{i % 50:032x}")
        at = now + 3600 + i * 7.0
        if i % 3 == 0:
            out.append(NewReminder(tid, f"one-shot {i}", at))
        elif i % 3 == 1:
            out.append(NewReminder(tid, f"every hour {i}", at, every_seconds=3600))
        else:
            out.append(NewReminder(tid, f"weekdays {i}", at, cron=f"{i % 60} 9 * * 1-5",
                                   system=i % 2 == 0))
    return out


def missed(n: int, now: float) -> list[NewReminder]:
    """``n`` recurring reminders that came due a day ago (1,440 missed runs each)."""
    out = []
    for i in range(n):
        tid = ThreadId(f"web_{i % 50:032x}")
        at = now - 86400 + (i % 60)
        if i % 2 == 0:
            out.append(NewReminder(tid, f"every minute {i}", at - at % 60, cron="* * * * *"))
        else:
            out.append(NewReminder(tid, f"each minute {i}", at, every_seconds=60))
    return out


async def prepare(reminders: list[NewReminder]) -> Path:
    """A new work folder whose database already holds ``reminders``; returns the folder."""
    work = Path(tempfile.mkdtemp(prefix="ganglion-bench-reminders-"))
    data = work / "data"
    db = await Database.open(data / "conversation.db")
    store = ReminderStore(db, data / "reminders.json", ZoneInfo(TZ))
    for start in range(0, len(reminders), 10_000):
        await store.add_many(reminders[start:start + 10_000])
    await db.close()
    return work


def config(llm: FakeLLM) -> dict[str, Any]:
    return {
        "llm": {"endpoints": [{"name": "fake", "base_url": llm.base_url}], "model": "bench"},
        "web": {"token": TOKEN},
        "logging": {"level": "INFO"},
        "paths": {"data_dir": "data", "log_dir": "logs"},
        "scheduler": {"timezone": TZ},
    }


async def start(d: Daemon) -> dict[str, float]:
    t0 = time.monotonic()
    d.start()
    await d.wait_ready(60)
    wall = time.monotonic() - t0
    for _ in range(200):
        m, r = SCHEDULED.search(d.text()), READY.search(d.text())
        if m and r:
            return {"pending": int(m.group(1)), "schedule_ms": float(m.group(2)),
                    "ready_s": float(r.group(1)), "start_to_healthz_s": wall}
        await asyncio.sleep(0.05)
    raise RuntimeError(f"no start-up lines in the daemon's output:\n{d.text()}")


async def start_and_stop(llm: FakeLLM, work: Path) -> dict[str, float]:
    """Start the daemon in ``work``, take its start-up figures (``start``), stop it."""
    d = Daemon(work, config(llm))
    try:
        result = await start(d)
        await d.stop(10)
    finally:
        d.kill()
    return result


async def load(llm: FakeLLM, n: int) -> dict[str, float]:
    result = await start_and_stop(llm, await prepare(background(n, time.time())))
    assert result["pending"] == n, result
    return result


async def catch_up(llm: FakeLLM, n: int) -> dict[str, float]:
    """Start with ``n`` missed recurring reminders; each must fire once and move on."""
    started = time.time()
    work = await prepare(missed(n, started))
    result = await start_and_stop(llm, work)
    with sqlite3.connect(work / "data" / "conversation.db") as conn:
        # Late firings (one each); a minute's next run may come while the daemon still runs.
        (late,) = conn.execute("SELECT count(*) FROM inbox WHERE source = 'reminder'"
                               " AND text LIKE '%(late, was due%'").fetchone()
        (moved,) = conn.execute("SELECT count(*) FROM reminders WHERE fired >= 1"
                                " AND next_at > ?", (started,)).fetchone()
    if late != n or moved != n:
        raise RuntimeError(f"{n} missed reminders: {late} fired late, {moved} moved on")
    return {"missed_recurring": n, **result}


def summary(lateness: list[float]) -> dict[str, float]:
    ms = sorted(x * 1000 for x in lateness)
    return {"n": len(ms), "median_ms": statistics.median(ms),
            "p99_ms": ms[max(0, int(len(ms) * 0.99) - 1)], "max_ms": ms[-1], "min_ms": ms[0]}


async def firing(llm: FakeLLM) -> dict[str, Any]:
    """Reminders set through the model's set_reminder tool once the daemon is up, as a
    user's would be, with exact due times (``at`` with seconds and offset)."""
    d = Daemon(await prepare(background(1000, time.time())), config(llm))
    arrived: dict[str, float] = {}
    try:
        await start(d)
        chat = ChatClient(d.url, TOKEN)
        await chat.connect()
        first = time.time() + 2.0
        staggered = {f"staggered {i}": first + i * 0.1 for i in range(20)}
        burst = {f"burst {i}": first + 3.0 for i in range(100)}
        due = {**staggered, **burst}
        zone = ZoneInfo(TZ)
        llm.script(Reply(tool_calls=[
            ("set_reminder", {"text": text, "at": datetime.fromtimestamp(at, zone).isoformat()})
            for text, at in due.items()]), Reply(text="All set."))
        reply = await chat.ask("set the benchmark's reminders")
        assert reply["text"] == "All set.", reply
        deadline = time.time() + 15
        while len(arrived) < len(due) and time.time() < deadline:
            try:
                event = await chat.next_event(timeout=max(0.01, deadline - time.time()))
            except TimeoutError:
                break
            now = time.time()
            text = event.get("text", "")
            if event.get("type") == "message" and text.startswith("⏰ Reminder: "):
                arrived.setdefault(text.removeprefix("⏰ Reminder: "), now)
        await chat.close()
        await d.stop(10)
    finally:
        d.kill()
    missing = sorted(set(due) - set(arrived))
    if missing:
        raise RuntimeError(f"{len(missing)} reminders never arrived on time, e.g. {missing[:3]}"
                           f"\n{d.text()[-3000:]}")
    early = [k for k in due if arrived[k] < due[k] - 0.005]
    return {
        "pending_besides": 1000,
        "staggered": summary([arrived[k] - due[k] for k in staggered]),
        "burst_of_100": summary([arrived[k] - due[k] for k in burst]),
        "early": len(early),
    }


def verdicts(results: dict[str, Any]) -> list[str]:
    """PASS or FAIL against each target of issue 4 (< 1 s), one line each."""
    checks: list[tuple[str, float, float]] = []  # (what, measured s, limit s)
    for r in results["load"]:
        if r["pending"] == 1000:
            checks.append(("1,000 pending reminders loaded and scheduled at start",
                           r["schedule_ms"] / 1000, 1.0))
    for r in results["missed"]:
        checks.append((f"{r['missed_recurring']:,} missed recurring reminders caught up at "
                       "start", r["schedule_ms"] / 1000, 1.0))
    fire = results["fire"]
    for key, what in (("staggered", "one reminder at a time"),
                      ("burst_of_100", "100 due at one instant")):
        checks.append((f"{what}: the latest within 1 s of its time",
                       fire[key]["max_ms"] / 1000, 1.0))
    lines = [f"{'PASS' if took < limit else 'FAIL'}  {what}: {took * 1000:.1f} ms "
             f"(target < {limit:g} s)" for what, took, limit in checks]
    early = fire["early"]
    lines.append(f"{'PASS' if early == 0 else 'FAIL'}  delivered before their time: {early}")
    return lines


async def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="0,1000,100000")
    ap.add_argument("--missed", default="1000", help="missed recurring reminders at start")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    llm = FakeLLM()
    await llm.start()
    try:
        results: dict[str, Any] = {
            "load": [await load(llm, int(n)) for n in args.sizes.split(",") if n],
            "missed": [await catch_up(llm, int(n)) for n in args.missed.split(",") if n],
            "fire": await firing(llm),
        }
    finally:
        await llm.stop()
    report(results, args.json)
    lines = verdicts(results)
    print("\n".join(lines))
    if any(line.startswith("FAIL") for line in lines):
        sys.exit(1)
    return results


if __name__ == "__main__":
    asyncio.run(main())
