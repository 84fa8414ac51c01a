"""Crash consistency: the real daemon SIGKILLed at random moments under load, restarted each time.

20 browser tabs send 6 messages each, spread over the run, over the real WebSocket, resending
an unacknowledged message with the same client id after every reconnect (as the page does),
while 3 one-shot reminders fall due and one recurs every 1.5 s; the daemon is killed 4 times
at moments drawn from a seeded RNG, the first two once the model is answering (so kills surely
cut turns: the fake LLM counts the calls cut off). At the end every acknowledged message has
exactly one answer, the echo (an error notice is no answer), every one-shot fired exactly once,
the recurring one once per period it was due (a period the daemon was down for is counted in
the late firing) and never twice for one due time, nothing is pending, and SQLite's integrity
check passes. The Matrix variant does the same with encrypted rooms on the shared Synapse:
every message the homeserver accepted is answered exactly once, and the Matrix store passes the
check too.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
import secrets
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from conftest import WEB_TOKEN, daemon_config
from daemon import Daemon
from fake_llm import FakeLLM, Reply, _last_user_text
from matrix_rooms import matrix_section
from synapse import HumanFactory, Synapse
from sync_db import SyncDb

SEED = 7
TABS = 20
MESSAGES_PER_TAB = 6
KILLS = 4
REMINDER_DELAYS = (1.5, 3.5, 6.0)
"""Seconds after the crash run begins: due before, between and after the kills."""
EVERY, EVERY_FIRST = 1.5, 1.0
"""The interval reminder: every 1.5 s from 1 s after the run begins, until the end."""
MID_TURN_KILLS = 2
"""The first kills wait until the model is answering, so some kills surely cut a turn."""


def slow_echo(body: dict[str, Any]) -> Reply:
    """An echo streamed over ~0.1 s, so kills land mid-turn as well as between turns."""
    return Reply(text=f"echo: {_last_user_text(body)} and some more words", chunk_delay=0.015)


class Tab:
    """One page: sends its messages in order; after a lost connection it reconnects and
    resends the unacknowledged one with the same id, until it is acknowledged."""

    def __init__(self, url: str, n: int) -> None:
        self.url = url
        self.thread_id = f"web_{secrets.token_hex(16)}"
        self.outbox = [(f"t{n}-m{i}-{secrets.token_hex(4)}", f"tab {n} message {i}")
                       for i in range(MESSAGES_PER_TAB)]
        self.acked: list[str] = []
        self.reconnects = 0

    async def run(self, rng: random.Random) -> None:
        async with aiohttp.ClientSession() as session:
            while self.outbox:
                try:
                    async with session.ws_connect(f"{self.url}/ws", origin=self.url) as ws:
                        await ws.send_json({"type": "hello", "token": WEB_TOKEN,
                                            "thread_id": self.thread_id})
                        ready = await ws.receive_json(timeout=10)
                        assert ready["type"] == "ready", ready
                        while self.outbox:
                            cid, text = self.outbox[0]
                            await ws.send_json({"type": "send", "id": cid, "text": text})
                            await self._wait_ack(ws, cid)
                            self.acked.append(cid)
                            self.outbox.pop(0)
                            await asyncio.sleep(rng.uniform(0.3, 1.7))
                except (aiohttp.ClientError, ConnectionError, TimeoutError, TypeError):
                    # TypeError: receive_json on a closed socket. Down: try again shortly.
                    self.reconnects += 1
                    await asyncio.sleep(0.1)

    @staticmethod
    async def _wait_ack(ws: aiohttp.ClientWebSocketResponse, cid: str) -> None:
        while True:
            msg = await ws.receive(timeout=15)
            if msg.type is not aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"socket closed: {msg.type}")
            frame = json.loads(msg.data)
            if frame.get("id") == cid and frame.get("type") == "ack":
                return
            assert not (frame.get("id") == cid and frame.get("type") == "error"), frame


def db_rows(db: SyncDb, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return db.rows(sql, params)


def settled(db: SyncDb, acked: int) -> bool:
    """All acked messages stored and answered, all one-shot reminders fired."""
    [(web, pending)] = db_rows(db, "SELECT count(*) FILTER (WHERE source = 'web'),"
                                   " count(*) FILTER (WHERE status != 'done') FROM inbox")
    [(active,)] = db_rows(db, "SELECT count(*) FROM reminders WHERE status = 'active'"
                              " AND every_seconds IS NULL")
    return web >= acked and pending == 0 and active == 0


def idle(db: SyncDb) -> bool:
    [(pending,)] = db_rows(db, "SELECT count(*) FROM inbox WHERE status != 'done'")
    return pending == 0


def the_one_answer(db: SyncDb, inbox_id: int) -> str:
    """The single assistant message answering an inbox row (an error notice is no answer)."""
    rows = db_rows(db, "SELECT role, content FROM messages WHERE inbox_id = ?"
                       " AND role IN ('assistant', 'notice')", (inbox_id,))
    assert [r[0] for r in rows] == ["assistant"], (inbox_id, rows)
    return str(rows[0][1])


def add_reminders(db: SyncDb, thread: str, begin: float) -> tuple[list[int], int]:
    """The one-shots of REMINDER_DELAYS and one every EVERY seconds; returns their ids."""
    ids = [db.insert(
        "INSERT INTO reminders (thread_id, text, next_at, created_by, created_at)"
        " VALUES (?, ?, ?, 'test', ?)", (thread, f"reminder {i}", begin + delay, begin))
        for i, delay in enumerate(REMINDER_DELAYS)]
    every = db.insert(
        "INSERT INTO reminders (thread_id, text, next_at, every_seconds, created_by,"
        " created_at) VALUES (?, 'every time', ?, ?, 'test', ?)",
        (thread, begin + EVERY_FIRST, EVERY, begin))
    return ids, every


def check_recurring(db: SyncDb, rid: int, first: float, until: float) -> int:
    """Each period of the interval reminder up to ``until`` fired once: by its own firing, or
    counted in a late one's "and N more times since" when the daemon was down for it; no due
    time fired twice. Returns the number of firings."""
    firings = db_rows(db, "SELECT client_id, id FROM inbox WHERE client_id LIKE ?"
                          " ORDER BY id", (f"reminder:{rid}:%",))
    dues = [int(cid.rsplit(":", 1)[1]) for cid, _ in firings]
    assert len(set(dues)) == len(dues) == len(firings), dues  # never twice for one due time
    assert sorted(dues) == dues and dues[0] == round(first * 1000), (first, dues)
    period = round(EVERY * 1000)
    covered = dues[0]
    for due, (_, inbox_id) in zip(dues, firings, strict=True):
        assert abs(due - covered) <= 2, (covered, dues)  # the next one due, none skipped
        text = the_one_answer(db, inbox_id)
        assert text.endswith("every time"), text
        more = re.search(r"and (\d+) more times? since", text)
        covered = due + period * (1 + (int(more.group(1)) if more else 0))
    # Nothing due well before the reminder was cancelled was left unfired.
    assert covered / 1000 > until - 2 * EVERY, (covered / 1000, until, dues)
    return len(firings)


async def kill_and_restart(d: Daemon, rng: random.Random) -> None:
    assert d.proc is not None and d.proc.poll() is None, d.text()  # it did not die by itself
    d.kill()  # SIGKILL: no cleanup at all
    await asyncio.sleep(rng.uniform(0, 0.3))
    d.start()
    await d.wait_ready()


async def test_sigkill_under_load_loses_nothing_and_answers_everything_once(
    tmp_path: Path, fake_llm: FakeLLM, database_url: str
) -> None:
    rng = random.Random(SEED)
    fake_llm.script(*[slow_echo] * (TABS * MESSAGES_PER_TAB * 3))
    d = Daemon(tmp_path, daemon_config(fake_llm, database={"url": database_url}))
    db = SyncDb(database_url, tmp_path / "data")
    d.start()
    try:
        await d.wait_ready()  # creates the database; stopped cleanly to add the reminders
        assert await d.stop() == 0
        begin = time.time()
        one_shots, every = add_reminders(db, f"web_{secrets.token_hex(16)}", begin)

        d.start()
        await d.wait_ready()
        tabs = [Tab(d.url, n) for n in range(TABS)]
        senders = [asyncio.create_task(tab.run(random.Random(rng.random()))) for tab in tabs]
        kills = []
        for k in range(KILLS):
            await asyncio.sleep(rng.uniform(0.3, 1.5))
            if k < MID_TURN_KILLS:  # this one lands while the model is answering
                async with asyncio.timeout(20):
                    await fake_llm.wait_until(lambda: fake_llm.in_flight > 0)
            kills.append(round(time.time() - begin, 2))
            await kill_and_restart(d, rng)
        async with asyncio.timeout(60):
            await asyncio.gather(*senders)
            acked = [cid for tab in tabs for cid in tab.acked]
            while not settled(db, len(acked)):  # noqa: ASYNC110  (the DB is the state)
                await asyncio.sleep(0.1)
            db.execute("UPDATE reminders SET status = 'cancelled', next_at = NULL"  # it ends
                       " WHERE id = ?", (every,))
            cancelled = time.time()
            await asyncio.sleep(0.3)  # a firing under way when it was cancelled ends
            while not idle(db):  # noqa: ASYNC110
                await asyncio.sleep(0.1)
        # No pause for "a wrong second answer": after the clean stop the database holds
        # everything that ran, and it is what the checks below read.
        assert await d.stop() == 0
        assert sum(tab.reconnects for tab in tabs) >= KILLS, "the kills were not felt"
        # Kills landed mid-turn: model calls were cut off by them (each restart re-ran it).
        assert fake_llm.disconnects >= MID_TURN_KILLS, fake_llm.disconnects

        # Every acknowledged message is stored once and has exactly one answer: the echo,
        # never an error notice.
        assert len(acked) == TABS * MESSAGES_PER_TAB
        stored = db_rows(db, "SELECT thread_id, client_id, id, status, text FROM inbox"
                             " WHERE source = 'web'")
        assert sorted(r[1] for r in stored) == sorted(acked)
        assert {r[3] for r in stored} == {"done"}
        for _, _, inbox_id, _, question in stored:
            assert the_one_answer(db, inbox_id) == f"echo: {question} and some more words"
        # One user row per message too (a re-run turn does not store the question twice).
        [(users,)] = db_rows(db, "SELECT count(*) FROM messages WHERE role = 'user'")
        assert users == len(acked)

        # Every one-shot reminder fired exactly once: one firing in the inbox, one message.
        reminders = db_rows(db, "SELECT id, status, fired FROM reminders WHERE id IN"
                                f" ({','.join('?' * len(one_shots))}) ORDER BY id",
                            tuple(one_shots))
        assert [(s, f) for _, s, f in reminders] == [("done", 1)] * len(REMINDER_DELAYS)
        for n, rid in enumerate(one_shots):
            firings = db_rows(db, "SELECT id FROM inbox WHERE client_id LIKE ?",
                              (f"reminder:{rid}:%",))
            assert len(firings) == 1, (rid, firings)
            assert the_one_answer(db, firings[0][0]).endswith(f"reminder {n}")
        # The interval reminder fired once per period, across the kills.
        fired = check_recurring(db, every, begin + EVERY_FIRST, cancelled)
        assert fired >= 5, fired
        for path in sorted((tmp_path / "data").glob("*.db")):
            assert SyncDb(f"sqlite:///{path}", path.parent).rows(
                "PRAGMA integrity_check") == [("ok",)], path
        print(f"kills at {kills} s; {sum(t.reconnects for t in tabs)} reconnects;"
              f" {fake_llm.disconnects} model calls cut by a kill; {fired} interval firings")
    finally:
        d.kill()


@pytest.mark.matrix
async def test_sigkill_with_matrix_rooms_answers_every_accepted_message_once(
    synapse: Synapse, fake_llm: FakeLLM, humans: HumanFactory, tmp_path: Path,
) -> None:
    rng = random.Random(SEED + 1)
    rooms_n, per_room, kills_n = 2, 8, 3
    fake_llm.script(*[slow_echo] * (rooms_n * per_room * 3))
    bot, person = await synapse.register("bot"), await synapse.register("human")
    config = {**daemon_config(fake_llm),
              **matrix_section(synapse, bot, [person.user_id], Path("data/matrix-store"),
                               owner=person.user_id)}
    d = Daemon(tmp_path, config)
    db = SyncDb("sqlite:///conversation.db", tmp_path / "data")
    d.start()
    try:
        await d.wait_ready()
        human = await humans(person)
        rooms = [await human.create_room(invite=[bot.user_id]) for _ in range(rooms_n)]
        for room in rooms:
            await human.wait_joined(room, bot.user_id)
        sent: dict[str, list[str]] = {room: [] for room in rooms}

        async def talk() -> None:
            for i in range(per_room):
                for room in rooms:
                    text = f"room {rooms.index(room)} message {i}"
                    await human.send(room, text)  # returns once the homeserver accepted it
                    sent[room].append(text)
                await asyncio.sleep(rng.uniform(0.2, 0.8))

        talking = asyncio.create_task(talk())
        for _ in range(kills_n):
            await asyncio.sleep(rng.uniform(0.5, 2.0))
            assert d.proc is not None and d.proc.poll() is None, d.text()
            d.kill()
            d.start()
            await d.wait_ready()
        await talking
        for room in rooms:
            await human.until(
                lambda room=room: len(human.messages_from(room, bot.user_id)) >= per_room, 60)
        await asyncio.sleep(1.0)
        await human.sync()
        assert await d.stop() == 0

        for room in rooms:  # in the room: one answer per message, none twice
            bodies = sorted(m.body for m in human.messages_from(room, bot.user_id))
            assert bodies == sorted(f"echo: {t} and some more words" for t in sent[room])
        stored = db_rows(db, "SELECT thread_id, text, id, status FROM inbox"
                             " WHERE source = 'matrix'")
        assert sorted((r[0], r[1]) for r in stored) == sorted(
            (room, t) for room in rooms for t in sent[room])
        assert {r[3] for r in stored} == {"done"}
        answers = dict(db_rows(db, "SELECT inbox_id, count(*) FROM messages WHERE role IN"
                                   " ('assistant', 'notice') GROUP BY inbox_id"))
        assert all(answers.get(r[2]) == 1 for r in stored), answers
        files = sorted((tmp_path / "data").rglob("*.db"))
        assert any("matrix-store" in str(p) for p in files), files
        for path in files:
            assert SyncDb(f"sqlite:///{path}", path.parent).rows(
                "PRAGMA integrity_check") == [("ok",)], path
    finally:
        d.kill()
