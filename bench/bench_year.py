"""A year of daily use: conversation.db's size with and without retention, and the start time.

The database is filled through the storage verbs the daemon uses (Inbox, History, Outbox,
Retention), one simulated day at a time:
- 50 turns a day: 30 in one Matrix room kept all year, 20 in that day's browser tab (a new
  tab, so a new conversation, each day); one turn in three calls a tool twice (each call
  and result kept as a step while the turn runs, as the worker does);
- 2 reminders firing and 16 heartbeat reviews a day (the review's instruction is the inbox
  text; a review with nothing to say stores nothing);
- every final answer queued in the outbox and marked delivered;
- usage rows as the quotas write them (one per message, one per model call).
Each day's rows are then dated to that day, and the pruned copy gets one retention pass at
the end of the day, as the daemon's daily pass would. Commits are not synced while filling
(synchronous=OFF: it changes the speed of the fill, not the size of the file).

Then the real daemon (``python -m ganglion``, the fake LLM as its model) starts on a copy of
each database, and on an empty one: its own "ready in" figure and spawn-to-/healthz. The
unpruned one starts with ``storage.keep_days: 30``, so its first pass (a year at once, the
upgrade case) is timed too, from its log line.

Usage:

    uv run python bench/bench_year.py [--days 365] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from common import report
from daemon import Daemon
from fake_llm import FakeLLM

from ganglion.messages import Inbound, Source, ThreadId
from ganglion.storage.db import Database
from ganglion.storage.history import History, NewMessage
from ganglion.storage.inbox import Inbox
from ganglion.storage.outbox import Outbox
from ganglion.storage.retention import DAY, Retention

TOKEN = "bench-token-0123456789"
READY = re.compile(r"ready in ([\d.]+) s")
PRUNED = re.compile(r"retention: (\d+) answered .*, (\d+) tool steps and (\d+) delivered"
                    r" outbox rows pruned in ([\d.]+) s")
ROOM = ThreadId("!daily:example.org")
QUESTION = "Could you look at what is on my list for this week and tell me what to do first? " * 2
ANSWER = ("Here is what I would do first, and why: " + "a sentence of the answer. " * 20)
ARGS = {"path": "notes/todo.md"}
RESULT = "- [ ] a line of the file the tool read\n" * 20
REVIEW = ("Review this conversation against HEARTBEATS.txt: is anything due, overdue or worth "
          "a word now? Answer with the sentinel if not. " * 3)
# (table, columns that hold a time): each day's new rows are dated to that day.
DATED = [("inbox", ("created_at", "done_at")), ("messages", ("created_at",)),
         ("outbox", ("created_at", "delivered_at")), ("usage", ("at",))]


class Year:
    """One database filled day by day; ``prune`` gives it the daily retention pass."""

    def __init__(self, db: Database, prune: bool, start: float) -> None:
        self.db, self.prune, self.start = db, prune, start
        self.inbox, self.history, self.outbox = Inbox(db), History(db), Outbox(db)
        self.retention = Retention(db, keep_days=30)
        self.seen = {table: 0 for table, _ in DATED}
        self.turns = 0

    async def day(self, n: int) -> None:
        tab = ThreadId(f"web_{n:032x}")
        for i in range(50):
            if i < 30:
                msg = Inbound(ROOM, QUESTION, "@me:example.org", Source.MATRIX,
                              f"$event{n}_{i}:example.org")
            else:
                msg = Inbound(tab, QUESTION, "web", Source.WEB, f"{n:08x}-{i:04x}-web-id")
            await self.turn(msg, tools=i % 3 == 0)
        for i in range(2):
            await self.turn(Inbound(ROOM, f"Reminder: water the plants ({i})", "reminder",
                                    Source.REMINDER, f"reminder:{i}:{n * 86400_000 + i}"),
                            tools=False, reminder=True)
        for i in range(16):
            msg, _ = await self.inbox.add(Inbound(ROOM, REVIEW, "heartbeat", Source.HEARTBEAT,
                                                  f"heartbeat:{n * 86400_000 + i * 1800_000}"))
            await self.history.finish_turn(ROOM, msg.id, [])
        await self.date(self.start + n * DAY)
        if self.prune:
            await self.retention.prune(now=self.start + (n + 1) * DAY)

    async def turn(self, msg: Inbound, tools: bool, reminder: bool = False) -> None:
        msg, _ = await self.inbox.add(msg)
        new: list[NewMessage] = []
        if not reminder:
            await self.history.begin_turn(msg, msg.text)
        if tools:
            for step in range(2):
                call_id = f"call_{msg.id}_{step}"
                new += [NewMessage("assistant", "", tool_calls=[{
                            "id": call_id, "type": "function",
                            "function": {"name": "read_file", "arguments": str(ARGS)}}]),
                        NewMessage("tool", RESULT, tool_call_id=call_id, name="read_file")]
                await self.history.add_step(msg.id, len(new) - 2, new[-2])
                await self.history.add_step(msg.id, len(new) - 1, new[-1])
        new.append(NewMessage("assistant", msg.text if reminder else ANSWER, deliver=True))
        await self.history.finish_turn(msg.thread_id, msg.id, new)
        await self.outbox.mark_delivered([o for o, _ in await self.outbox.pending(msg.thread_id)])
        calls = 1 + (2 if tools else 0) if not reminder else 0
        async with self.db.transaction() as conn:
            await conn.executemany(
                "INSERT INTO usage (at, account, sender, thread_id, source, kind, model,"
                " endpoint, prompt_tokens, completion_tokens)"
                " VALUES (0, ?, ?, ?, ?, ?, 'llama3.1', 'local', ?, ?)",
                [(msg.sender, msg.sender, msg.thread_id, msg.source.value, kind, p, c)
                 for kind, p, c in [("message", 0, 0)] + [("call", 3000, 200)] * calls])
        self.turns += 1

    async def date(self, day_start: float) -> None:
        """Date the rows written since the last call to this day (spread over its hours)."""
        for table, columns in DATED:
            sets = ", ".join(f"{c} = ? + (id % 1000) * 50" for c in columns)
            await self.db.write(
                f"UPDATE {table} SET {sets} WHERE id > ?",
                (*[day_start + 8 * 3600] * len(columns), self.seen[table]))
            row = await self.db.fetchone(f"SELECT max(id) FROM {table}")
            self.seen[table] = int(row[0] or 0) if row is not None else 0


def size_mib(path: Path) -> float:
    return round(path.stat().st_size / 2**20, 2)


async def fill(path: Path, days: int, prune: bool) -> dict[str, Any]:
    db = await Database.open(path)
    await db.write("PRAGMA synchronous = OFF")  # the fill's speed, not the file's size
    start = time.time() - days * DAY
    year = Year(db, prune, start)
    t0 = time.monotonic()
    for n in range(days):
        await year.day(n)
    filled = time.monotonic() - t0
    counts = {t: int((await db.fetchone(f"SELECT count(*) FROM {t}"))[0])  # type: ignore[index]
              for t in ("inbox", "messages", "outbox", "turn_steps", "usage")}
    pages = {p: int((await db.fetchone(f"PRAGMA {p}"))[0])  # type: ignore[index]
             for p in ("page_count", "freelist_count", "page_size")}
    tables = {r["name"]: int(r["bytes"]) for r in await db.fetchall(
        "SELECT name, sum(pgsize) AS bytes FROM dbstat GROUP BY name"
        " HAVING bytes > 4096 ORDER BY 2 DESC")}  # the tables and indexes that grow
    await db.write("PRAGMA wal_checkpoint(TRUNCATE)")
    await db.close()
    return {"turns": year.turns, "fill_s": round(filled, 1),
            "size_mib": size_mib(path), "rows": counts, "pages": pages,
            "bytes_by_table_and_index": tables}


async def start_on(llm: FakeLLM, db: Path | None, keep_days: int | None) -> dict[str, Any]:
    """Spawn the daemon on a copy of ``db`` (or none); its start figures, then stop it."""
    work = Path(tempfile.mkdtemp(prefix="ganglion-bench-year-"))
    (work / "data").mkdir()
    if db is not None:
        shutil.copy(db, work / "data" / "conversation.db")
    d = Daemon(work, {
        "llm": {"endpoints": [{"name": "fake", "base_url": llm.base_url}], "model": "bench"},
        "web": {"token": TOKEN}, "logging": {"level": "INFO"},
        "paths": {"data_dir": "data", "log_dir": "logs"},
        "heartbeat": {"enabled": False}, "storage": {"keep_days": keep_days},
    })
    try:
        t0 = time.monotonic()
        d.start()
        await d.wait_ready(120)
        wall = time.monotonic() - t0
        pruned = None
        if keep_days is not None:
            for _ in range(6000):  # the first pass: up to 5 minutes
                m = PRUNED.search(d.text())
                if m:
                    pruned = {"inbox": int(m[1]), "steps": int(m[2]), "outbox": int(m[3]),
                              "seconds": float(m[4])}
                    break
                await asyncio.sleep(0.05)
        ready = READY.search(d.text())
        await d.stop(10)
    finally:
        d.kill()
    result: dict[str, Any] = {"ready_s": float(ready[1]) if ready else None,
                              "spawn_to_healthz_s": round(wall, 2)}
    if pruned is not None:
        result["first_pruning_pass"] = pruned
    shutil.rmtree(work, ignore_errors=True)
    return result


async def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    folder = Path(tempfile.mkdtemp(prefix="ganglion-bench-year-"))
    kept, pruned = folder / "kept.db", folder / "pruned.db"
    results: dict[str, Any] = {"days": args.days,
                               "kept": await fill(kept, args.days, prune=False),
                               "pruned_daily": await fill(pruned, args.days, prune=True)}
    llm = FakeLLM(models=["bench"])
    await llm.start()
    try:
        results["start"] = {
            "empty": await start_on(llm, None, 30),
            "kept_keep_days_null": await start_on(llm, kept, None),
            "kept_first_start_with_keep_days_30": await start_on(llm, kept, 30),
            "pruned_daily": await start_on(llm, pruned, 30),
        }
    finally:
        await llm.stop()
    shutil.rmtree(folder, ignore_errors=True)
    report(results, args.json)
    return results


if __name__ == "__main__":
    asyncio.run(main())
