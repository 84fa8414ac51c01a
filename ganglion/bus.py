"""The bus: one durable queue of Inbound work, ordered within a thread, fair across threads.

Every producer (web, Matrix, reminders, heartbeats) calls ``submit``; nothing calls the worker
directly. A message is stored in SQLite before ``submit`` returns, so acknowledging it after
that is safe: on the next start, whatever was not answered is run again.

Scheduling: each thread is a lane. A thread with work waits in one FIFO ready-queue; a pool
of ``max_turns_in_flight`` runners takes threads from it, runs ONE turn, and puts the thread
back at the end of the queue if more work arrived. So turns are strictly ordered within a
thread, concurrent across threads, and admitted first-come first-served: a burst of 50 new
threads starts in arrival order and one busy thread cannot starve the others. (LLM calls
are capped again per endpoint, FIFO, by the LLM client.)

A message that arrives while its thread's turn runs waits for that turn to end and then
gets a turn of its own, with the finished turn in its history.

A runner that dies (a bug outside a turn's own error handling) is logged at once with its
traceback and replaced, so the number of parallel turns never shrinks; the thread it held
goes back in line with its message still first, so that message runs again (up to
``RUNNER_DEATHS_PER_MESSAGE`` times; then it waits, unanswered, for the next start).

A producer may bring its messages up to date when a start recovers them (``on_recover``): a
reminder written on time before a crash says it is late when it is delivered after.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from ganglion.messages import Inbound, Source, ThreadId
from ganglion.storage.inbox import Inbox

log = logging.getLogger(__name__)

RUNNER_DEATHS_PER_MESSAGE = 3
"""A message that killed this many runners is not run again before the next start: a fault
that recurs must not loop (each try may be a model call)."""


class TurnHandler(Protocol):
    async def run_turn(self, msg: Inbound) -> None:
        """Answer ``msg`` and mark it answered. Must not raise but for CancelledError."""
        ...

    async def turn_stopped(self, msg: Inbound) -> None:
        """The user stopped the turn: answer ``msg`` with a short notice and mark it answered."""
        ...

    def is_immediate(self, msg: Inbound) -> bool:
        """True for control messages (``/approve``, ``/deny``) that must not wait in their
        thread's lane behind the turn they control: they run at once, outside the lane."""
        ...


Cancelled = Callable[[ThreadId, list[Inbound]], None]
"""Told which queued messages of a thread were cancelled (an interface marks them so)."""

Recover = Callable[[Inbound], Awaitable[Inbound]]
"""A message the last run left unanswered, as it should run now (same thread, same id)."""


class Bus:
    def __init__(self, inbox: Inbox, handler: TurnHandler, max_in_flight: int) -> None:
        self.inbox = inbox
        self.handler = handler
        self.max_in_flight = max_in_flight
        self._lanes: dict[ThreadId, deque[Inbound]] = {}
        self._ready: asyncio.Queue[ThreadId] = asyncio.Queue()
        self._running: dict[ThreadId, asyncio.Task[None]] = {}
        self._runners: set[asyncio.Task[None]] = set()
        self._held: dict[asyncio.Task[None], ThreadId] = {}
        """The thread each runner took from the line and has not put back or finished yet."""
        self._names = itertools.count()
        self._deaths: dict[int, int] = {}
        """Runner deaths per inbox id of the message being run."""
        self._controls: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._recover: dict[Source, Recover] = {}
        self._on_cancelled: list[Cancelled] = []

    async def submit(self, msg: Inbound) -> tuple[Inbound, bool]:
        """Store ``msg`` durably and queue it. Returns (stored msg, False if it was a resend)."""
        stored, is_new = await self.inbox.add(msg)
        if is_new:
            self._dispatch(stored)
        return stored, is_new

    async def submit_many(self, msgs: Sequence[Inbound]) -> list[tuple[Inbound, bool]]:
        """``submit`` for many at once (stored in one write), in order."""
        stored = await self.inbox.add_many(msgs)
        for msg, is_new in stored:
            if is_new:
                self._dispatch(msg)
        return stored

    def accepted(self, msg: Inbound) -> None:
        """Queue ``msg``, stored durably by a storage verb of its own (a regenerate, in one
        transaction with the answer it replaces) as ``submit`` stores the others."""
        self._dispatch(msg)

    async def known(self, thread_id: ThreadId, client_ids: list[str]) -> set[str]:
        """Of these client ids, the ones already submitted in this thread."""
        return await self.inbox.known(thread_id, client_ids)

    def _dispatch(self, msg: Inbound) -> None:
        """A stored message to its lane, or at once when it controls a running turn."""
        if self.handler.is_immediate(msg):
            self._run_immediate(msg)
        else:
            self._enqueue(msg)

    def _run_immediate(self, msg: Inbound) -> None:
        task = asyncio.create_task(self.handler.run_turn(msg), name=f"control-{msg.thread_id}")
        self._controls.add(task)
        task.add_done_callback(self._controls.discard)

    def _enqueue(self, msg: Inbound) -> None:
        lane = self._lanes.get(msg.thread_id)
        if lane is None:
            self._lanes[msg.thread_id] = deque([msg])
            self._ready.put_nowait(msg.thread_id)  # a new lane joins the end of the line
        else:
            lane.append(msg)  # the lane is already queued or running
        self._idle.clear()

    def on_recover(self, source: Source, recover: Recover) -> None:
        """Pass each recovered message of ``source`` through ``recover`` before it is queued
        (called before ``start``)."""
        self._recover[source] = recover

    async def start(self) -> int:
        """Queue what an earlier run accepted but did not answer; start the runners."""
        pending = [await self._recovered(m) for m in await self.inbox.pending()]
        for msg in pending:
            self._dispatch(msg)
        if pending:
            log.info("recovered %d unanswered message(s) from the last run", len(pending))
        for _ in range(self.max_in_flight):
            self._start_runner()
        return len(pending)

    def _start_runner(self) -> None:
        runner = asyncio.create_task(self._runner(), name=f"bus-runner-{next(self._names)}")
        self._runners.add(runner)
        runner.add_done_callback(self._runner_ended)

    def _runner_ended(self, runner: asyncio.Task[None]) -> None:
        """A runner ended: at ``stop`` that is all; otherwise it died, so replace it."""
        held = self._held.pop(runner, None)
        supervised = runner in self._runners  # ``stop`` lets go of its runners first
        self._runners.discard(runner)
        if not supervised or runner.cancelled():  # ``stop``, or the end of the event loop
            return
        exc = runner.exception()
        log.error("bus: %s died (%r); starting another in its place", runner.get_name(), exc,
                  exc_info=exc)
        if held is not None and held in self._lanes:
            self._requeue_after_death(held)
        self._start_runner()

    def _requeue_after_death(self, thread_id: ThreadId) -> None:
        """The dead runner's thread back in line, its unanswered message still first."""
        lane = self._lanes[thread_id]
        msg = lane[0]
        deaths = self._deaths.get(msg.id, 0) + 1
        self._deaths[msg.id] = deaths
        if deaths >= RUNNER_DEATHS_PER_MESSAGE:
            log.error("[%s] message %d was being run by %d runners that died; it stays "
                      "unanswered until the next start", thread_id, msg.id, deaths)
            del self._deaths[msg.id]
            lane.popleft()
        if lane:
            self._ready.put_nowait(thread_id)
        else:
            self._lane_done(thread_id)

    async def _recovered(self, msg: Inbound) -> Inbound:
        recover = self._recover.get(msg.source)
        if recover is None:
            return msg
        try:
            return await recover(msg)
        except asyncio.CancelledError:
            raise
        except Exception:  # run it as it was stored rather than not at all
            log.exception("[%s] could not bring recovered message %d up to date",
                          msg.thread_id, msg.id)
            return msg

    async def stop(self) -> None:
        """Cancel running turns (their input stays unanswered and is run at the next start)."""
        tasks = [*self._runners, *self._controls]
        self._runners = set()  # their ends are no deaths: nothing replaces them
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def is_busy(self, thread_id: ThreadId) -> bool:
        return thread_id in self._running

    def depth(self) -> int:
        """Messages waiting for a turn, in every thread (those running not counted)."""
        return sum(len(lane) for lane in self._lanes.values()) - len(self._running)

    def in_flight(self) -> int:
        """Turns running now."""
        return len(self._running)

    def queued(self, thread_id: ThreadId) -> int:
        """Messages of this thread waiting or running."""
        return len(self._lanes.get(thread_id, ()))

    def cancel_turn(self, thread_id: ThreadId) -> bool:
        """The user's Stop: cancel this thread's running turn. False if none runs."""
        task = self._running.get(thread_id)
        if task is None or task.done():
            return False
        task.cancel("stopped by the user")
        return True

    def on_cancelled(self, listener: Cancelled) -> None:
        self._on_cancelled.append(listener)

    async def cancel_queued(self, thread_id: ThreadId,
                            sender: str | None = None) -> list[Inbound]:
        """Drop the thread's messages waiting behind its running turn (or all of them when
        none runs yet), or only ``sender``'s: they are never run, also after a restart. The
        running turn goes on (Stop ends it). Returns the cancelled messages, oldest first."""
        lane = self._lanes.get(thread_id)
        if not lane:
            return []
        # A runner holds the lane from taking it until it let go of its first message.
        running = 1 if thread_id in self._held.values() else 0
        before = list(lane)
        queued = [m for m in before[running:] if sender is None or m.sender == sender]
        # Out of the lane before the write, so that no runner starts one meanwhile; an
        # emptied lane stays until a runner takes it from the line and lets it go.
        lane.clear()
        lane.extend(m for i, m in enumerate(before) if i < running or m not in queued)
        try:
            done = {i for i, _ in await self.inbox.cancel([m.id for m in queued])}
        except BaseException:
            # Still pending in the inbox: they run after all, in their order (the running
            # head may have finished meanwhile, and new messages come after).
            now = list(lane)
            lane.clear()
            lane.extend([m for m in before if m in now or m in queued]
                        + [m for m in now if m not in before])
            raise
        cancelled = [m for m in queued if m.id in done]
        if cancelled:
            log.info("[%s] %d queued message(s) cancelled", thread_id, len(cancelled))
            for listener in self._on_cancelled:
                listener(thread_id, cancelled)
        return cancelled

    async def wait_idle(self) -> None:
        """Until no thread has work (for tests and benchmarks)."""
        await self._idle.wait()

    async def _runner(self) -> None:
        me = asyncio.current_task()
        assert me is not None
        while True:
            thread_id = await self._ready.get()
            lane = self._lanes[thread_id]
            if not lane:  # every message of it was cancelled while it waited in line
                self._lane_done(thread_id)
                continue
            self._held[me] = thread_id
            msg = lane[0]
            turn = asyncio.create_task(self.handler.run_turn(msg), name=f"turn-{thread_id}")
            self._running[thread_id] = turn
            try:
                await asyncio.wait({turn})
            except asyncio.CancelledError:
                # Shutdown: stop the turn too and leave its input pending for the next start.
                turn.cancel()
                await asyncio.gather(turn, return_exceptions=True)
                raise
            finally:
                self._running.pop(thread_id, None)
            if turn.cancelled():
                await self._after_user_stop(msg)
            elif (exc := turn.exception()) is not None:
                log.error("[%s] turn failed", thread_id, exc_info=exc)
            lane.popleft()
            self._deaths.pop(msg.id, None)
            del self._held[me]
            if lane:
                self._ready.put_nowait(thread_id)  # more work: back to the end of the line
            else:
                self._lane_done(thread_id)

    def _lane_done(self, thread_id: ThreadId) -> None:
        del self._lanes[thread_id]
        if not self._lanes:
            self._idle.set()

    async def _after_user_stop(self, msg: Inbound) -> None:
        try:
            await self.handler.turn_stopped(msg)
        except Exception:
            log.exception("[%s] could not record the stopped turn", msg.thread_id)
