"""The bus: durable admission, order within a thread, concurrency across threads, FIFO fairness."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import pytest
from conftest import OpenDb, eventually

from ganglion.bus import RUNNER_DEATHS_PER_MESSAGE, Bus
from ganglion.messages import Inbound, Source, ThreadId
from ganglion.storage.backend import Backend
from ganglion.storage.inbox import Inbox


class RecordingHandler:
    """Answers by recording; each turn takes ``delay`` seconds (or waits for ``gate``)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.started: list[tuple[str, str]] = []
        self.finished: list[tuple[str, str]] = []
        self.running = 0
        self.max_running = 0
        self.per_thread_running: dict[str, int] = {}
        self.overlap_in_thread = False
        self.gate: asyncio.Event | None = None
        self.inbox: Inbox | None = None
        self.stopped: list[str] = []
        self._changed = asyncio.Condition()

    async def until(self, condition: Callable[[], bool]) -> None:
        """Until ``condition`` holds, looked at whenever a turn starts: a wait for the event,
        not for time."""
        async with self._changed:
            await asyncio.wait_for(self._changed.wait_for(condition), 10)

    async def run_turn(self, msg: Inbound) -> None:
        self.started.append((msg.thread_id, msg.text))
        self.running += 1
        self.max_running = max(self.max_running, self.running)
        n = self.per_thread_running.get(msg.thread_id, 0) + 1
        self.per_thread_running[msg.thread_id] = n
        self.overlap_in_thread |= n > 1
        async with self._changed:
            self._changed.notify_all()
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(self.delay)
            assert self.inbox is not None
            async with self.inbox.db.transaction() as conn:
                await conn.execute("UPDATE inbox SET status = 'done' WHERE id = ?", (msg.id,))
            self.finished.append((msg.thread_id, msg.text))
        finally:
            self.running -= 1
            self.per_thread_running[msg.thread_id] -= 1

    def is_immediate(self, msg: Inbound) -> bool:
        return msg.text == "/approve"

    async def turn_stopped(self, msg: Inbound) -> None:
        self.stopped.append(msg.text)
        assert self.inbox is not None
        async with self.inbox.db.transaction() as conn:
            await conn.execute("UPDATE inbox SET status = 'done' WHERE id = ?", (msg.id,))


def inbound(thread: str, text: str, cid: str | None = None) -> Inbound:
    return Inbound(ThreadId(thread), text, "tester", Source.WEB, cid or text)


async def make_bus(open_db: OpenDb, handler: RecordingHandler, cap: int) -> tuple[Bus, Backend]:
    db = await open_db()
    handler.inbox = Inbox(db)
    bus = Bus(handler.inbox, handler, cap)
    await bus.start()
    return bus, db


async def test_order_within_a_thread_and_no_overlap(open_db: OpenDb) -> None:
    handler = RecordingHandler(delay=0.005)
    bus, db = await make_bus(open_db, handler, cap=8)
    for i in range(20):
        await bus.submit(inbound("web_" + "a" * 16, f"m{i}"))
    await asyncio.wait_for(bus.wait_idle(), 10)
    assert [t for _, t in handler.finished] == [f"m{i}" for i in range(20)]
    assert not handler.overlap_in_thread
    await bus.stop()
    await db.close()


async def test_threads_run_concurrently_up_to_the_cap(open_db: OpenDb) -> None:
    handler = RecordingHandler()
    handler.gate = asyncio.Event()  # turns end when the test says, not after a delay
    bus, db = await make_bus(open_db, handler, cap=3)
    for i in range(9):
        await bus.submit(inbound(f"web_{i:016x}", "hi"))
    await handler.until(lambda: handler.running == 3)
    handler.gate.set()
    await asyncio.wait_for(bus.wait_idle(), 10)
    assert handler.max_running == 3
    assert len(handler.finished) == 9
    await bus.stop()
    await db.close()


async def test_fifo_admission_across_threads(open_db: OpenDb) -> None:
    """A burst of 50 threads starts in arrival order; a thread with a backlog goes to the back."""
    handler = RecordingHandler()
    handler.gate = asyncio.Event()
    bus, db = await make_bus(open_db, handler, cap=4)
    busy = "web_" + "f" * 16
    for i in range(5):  # one thread with a backlog, submitted first
        await bus.submit(inbound(busy, f"busy{i}"))
    for i in range(50):
        await bus.submit(inbound(f"web_{i:016x}", f"t{i}"))
    handler.gate.set()
    await asyncio.wait_for(bus.wait_idle(), 10)
    order = [text for _, text in handler.started]
    burst = [t for t in order if t.startswith("t")]
    assert burst == [f"t{i}" for i in range(50)]
    # The busy thread's second turn waited behind the 50 that arrived before it was re-queued.
    assert order.index("busy1") > order.index("t49") - 4
    await bus.stop()
    await db.close()


async def test_duplicate_client_id_is_stored_and_run_once(open_db: OpenDb) -> None:
    handler = RecordingHandler()
    bus, db = await make_bus(open_db, handler, cap=2)
    first, new1 = await bus.submit(inbound("web_" + "b" * 16, "hello", cid="c1"))
    again, new2 = await bus.submit(inbound("web_" + "b" * 16, "hello", cid="c1"))
    assert new1 and not new2 and first.id == again.id
    await asyncio.wait_for(bus.wait_idle(), 10)
    assert handler.finished == [("web_" + "b" * 16, "hello")]
    await bus.stop()
    await db.close()


async def test_unanswered_messages_are_recovered_once_at_start(open_db: OpenDb) -> None:
    handler = RecordingHandler()
    handler.gate = asyncio.Event()  # never opened: the turn is running when we stop
    bus, db = await make_bus(open_db, handler, cap=2)
    await bus.submit(inbound("web_" + "c" * 16, "before stop"))
    await handler.until(lambda: bool(handler.started))
    assert handler.started == [("web_" + "c" * 16, "before stop")]
    await asyncio.wait_for(bus.stop(), 2)  # cancels the running turn
    await db.close()

    handler2 = RecordingHandler()
    bus2, db2 = await make_bus(open_db, handler2, cap=2)
    await asyncio.wait_for(bus2.wait_idle(), 10)
    assert handler2.finished == [("web_" + "c" * 16, "before stop")]
    await bus2.stop()
    await db2.close()

    handler3 = RecordingHandler()  # answered now: nothing to redo
    db3 = await open_db()
    handler3.inbox = Inbox(db3)
    bus3 = Bus(handler3.inbox, handler3, 2)
    assert await bus3.start() == 0  # the recovery had its chance, and found nothing
    await asyncio.wait_for(bus3.wait_idle(), 10)
    assert handler3.started == []
    await bus3.stop()
    await db3.close()


async def test_user_stop_cancels_only_that_turn(open_db: OpenDb) -> None:
    handler = RecordingHandler()
    handler.gate = asyncio.Event()
    bus, db = await make_bus(open_db, handler, cap=4)
    a, b = "web_" + "d" * 16, "web_" + "e" * 16
    await bus.submit(inbound(a, "long"))
    await bus.submit(inbound(b, "other"))
    await bus.submit(inbound(a, "next"))
    await handler.until(lambda: len(handler.started) == 2)  # "long" and "other"
    assert bus.is_busy(ThreadId(a))
    assert bus.cancel_turn(ThreadId(a))
    handler.gate.set()
    await asyncio.wait_for(bus.wait_idle(), 10)
    assert handler.stopped == ["long"]
    assert ("web_" + "e" * 16, "other") in handler.finished and (a, "next") in handler.finished
    assert not bus.cancel_turn(ThreadId(a))
    await bus.stop()
    await db.close()


@pytest.mark.parametrize("cap", [1, 5])
async def test_stop_is_prompt_with_turns_running(open_db: OpenDb, cap: int) -> None:
    handler = RecordingHandler()
    handler.gate = asyncio.Event()
    bus, db = await make_bus(open_db, handler, cap=cap)
    for i in range(10):
        await bus.submit(inbound(f"web_{i:016x}", "wait"))
    await handler.until(lambda: handler.running == cap)  # the stop finds turns running
    await asyncio.wait_for(bus.stop(), 1)
    rows = await db.fetchall("SELECT status FROM inbox")
    assert [r["status"] for r in rows] == ["pending"] * 10
    await db.close()


async def test_control_messages_do_not_wait_behind_the_running_turn(open_db: OpenDb) -> None:
    handler = RecordingHandler()
    handler.gate = asyncio.Event()
    bus, db = await make_bus(open_db, handler, cap=2)
    thread = "web_" + "9" * 16
    await bus.submit(inbound(thread, "needs approval"))
    await handler.until(lambda: len(handler.started) == 1)
    await bus.submit(inbound(thread, "/approve"))
    # The control message starts although its thread's turn is still running.
    await handler.until(lambda: len(handler.started) == 2)
    assert [t for _, t in handler.started] == ["needs approval", "/approve"]
    handler.gate.set()
    await asyncio.wait_for(bus.wait_idle(), 5)
    await bus.stop()
    await db.close()


class RunnerFault(BaseException):
    """Not an Exception: no per-turn ``except Exception`` catches it, so it ends the runner."""


class DyingOnStop(RecordingHandler):
    """Records like RecordingHandler, but recording a stopped turn raises RunnerFault the first
    ``deaths`` times: the runner awaits it outside the turn's task, so the runner dies."""

    def __init__(self, deaths: int) -> None:
        super().__init__()
        self.deaths = deaths

    async def turn_stopped(self, msg: Inbound) -> None:
        if self.deaths > 0:
            self.deaths -= 1
            raise RunnerFault(f"recording the stop of {msg.text!r} failed")
        await super().turn_stopped(msg)


def deaths(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if "starting another" in r.getMessage()]


async def test_a_runner_that_dies_is_logged_and_replaced_and_its_message_runs_again(
    open_db: OpenDb, caplog: pytest.LogCaptureFixture
) -> None:
    handler = DyingOnStop(deaths=1)
    handler.gate = asyncio.Event()
    bus, db = await make_bus(open_db, handler, cap=3)
    a = ThreadId("web_" + "a" * 16)
    await bus.submit(inbound(a, "long"))
    await bus.submit(inbound(a, "after"))  # waits in its lane behind "long"
    await eventually(lambda: handler.started == [(a, "long")])
    assert bus.cancel_turn(a)
    # The runner died recording the stop: logged at once, with the traceback.
    await eventually(lambda: len(deaths(caplog)) == 1)
    died = deaths(caplog)[0]
    assert died.exc_info is not None and died.exc_info[0] is RunnerFault
    assert "Traceback" in caplog.text and "recording the stop of 'long' failed" in caplog.text
    # Its message was not lost: still unanswered, it runs again (and holds its thread).
    await eventually(lambda: handler.started == [(a, "long"), (a, "long")])
    assert bus.is_busy(a) and bus.queued(a) == 2
    # Full concurrency: six new threads fill the two other places, up to the cap of three.
    for i in range(6):
        await bus.submit(inbound(f"web_{i:016x}", f"t{i}"))
    await eventually(lambda: handler.running == 3)
    assert [t for _, t in handler.started[2:]] == ["t0", "t1"]
    handler.gate.set()
    await asyncio.wait_for(bus.wait_idle(), 10)
    assert handler.max_running == 3 and not handler.overlap_in_thread
    assert [t for tid, t in handler.finished if tid == a] == ["long", "after"]
    assert len(handler.finished) == 8
    rows = await db.fetchall("SELECT status FROM inbox")
    assert [r["status"] for r in rows] == ["done"] * 8
    assert not bus.is_busy(a) and bus.queued(a) == 0
    await bus.stop()
    await db.close()


async def test_a_message_that_keeps_killing_runners_waits_for_the_next_start(
    open_db: OpenDb, caplog: pytest.LogCaptureFixture
) -> None:
    handler = DyingOnStop(deaths=RUNNER_DEATHS_PER_MESSAGE)
    handler.gate = asyncio.Event()
    bus, db = await make_bus(open_db, handler, cap=2)
    a = ThreadId("web_" + "b" * 16)
    await bus.submit(inbound(a, "poison"))
    for n in range(1, RUNNER_DEATHS_PER_MESSAGE + 1):
        await eventually(lambda n=n: len(handler.started) == n and bus.is_busy(a))
        assert bus.cancel_turn(a)
    await eventually(lambda: "stays unanswered until the next start" in caplog.text)
    assert not bus.is_busy(a) and bus.queued(a) == 0
    assert len(deaths(caplog)) == RUNNER_DEATHS_PER_MESSAGE
    # The thread and the bus go on; the message is still pending for the next start.
    handler.gate.set()
    await bus.submit(inbound(a, "next"))
    await asyncio.wait_for(bus.wait_idle(), 10)
    assert handler.finished == [(a, "next")]
    rows = await db.fetchall("SELECT text, status FROM inbox ORDER BY id")
    assert [(r["text"], r["status"]) for r in rows] == [("poison", "pending"), ("next", "done")]
    await bus.stop()
    await db.close()
