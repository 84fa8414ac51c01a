"""Reminders: a producer on the bus. One APScheduler job wakes at the next due time and submits each
due reminder as an Inbound, exactly once.

Why one wake-up job and not one job per reminder: the SQLite table is the schedule. The
``reminders_due`` index answers "what is due" and "when next", so a start loads nothing
into memory (a thousand reminders or a million start alike), and no in-memory copy can
drift from the table. APScheduler provides the timer in the daemon's loop and, through
its triggers, the cron and time-zone arithmetic.

Exactly once: a firing is submitted with ``client_id = reminder:<id>:<due ms>``; the
inbox's unique (thread_id, client_id) makes a second submission of the same firing a no-op.
Only then is the row advanced. A crash between the two re-fires on the next start, and the
bus drops the duplicate. A firing stored but not delivered before a crash is run by the
bus's recovery; if it has become late meanwhile, its text is rebuilt to say so
(``recovered``), from the firing's meta and the reminder's row.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta, tzinfo
from typing import Any

from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.date import DateTrigger

from ganglion.bus import Bus
from ganglion.messages import Inbound, Source, ThreadId
from ganglion.storage.reminders import NewReminder, Reminder, ReminderStore, repeat_text
from ganglion.triggers import system_thread

log = logging.getLogger(__name__)

WAKE_JOB = "reminders"
LATE_AFTER_SECONDS = 60.0
"""A reminder delivered this long after its time (a suspended laptop, a blocked loop) says
it is late, as does every reminder that came due while the daemon was not running."""
RETRY_SECONDS = 5.0
MIRROR_DELAY = 0.2
"""data/reminders.json is rewritten this long after a change: changes in a burst share one
write, and the write never competes with the delivery that caused it."""
MAX_ACTIVE = 10_000
DUE_BATCH = 500
MAX_COUNTED = 20
"""Missed cron times counted one by one at most; beyond, the message says "20 or more
times". Each step costs ~15 µs of CPU, and a start may catch up a thousand crons at once:
counting a day of a per-minute cron (1,440 steps) for each would take 20 s."""
_CRON_DAYS = ["sun", "mon", "tue", "wed", "thu", "fri", "sat"]


class BadSchedule(ValueError):
    """A cron expression or interval that cannot be used; the message says why."""


def local_text(ts: float, tz: tzinfo) -> str:
    """``Tue 2026-11-24 09:00 +0545``: what people and the model read."""
    dt = datetime.fromtimestamp(ts, tz)
    clock = "%H:%M:%S" if dt.second else "%H:%M"
    return dt.strftime(f"%a %Y-%m-%d {clock} %Z")


def _weekdays(field: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday) as APScheduler 3 day names.

    APScheduler 3 counts 0 as Monday, so ``1-5`` would silently mean Tuesday to Saturday;
    names mean the same to both.
    """
    if field in ("*", "?"):
        return "*"
    days: set[int] = set()

    def number(token: str) -> int:
        token = token.strip().lower()
        if token in _CRON_DAYS:
            return _CRON_DAYS.index(token)
        if token.isdigit() and int(token) <= 7:
            return int(token) % 7
        raise BadSchedule(f"day of week {token!r} is not 0-7 (0 and 7 are Sunday) or sun-sat")

    for item in field.split(","):
        base, _, step_text = item.partition("/")
        step = int(step_text) if step_text.isdigit() and int(step_text) > 0 else None
        if step_text and step is None:
            raise BadSchedule(f"day-of-week step {step_text!r} is not a positive number")
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            a, b = base.split("-", 1)
            first, last = number(a), number(b)
            if b.strip() == "7":
                last = 7  # "5-7" is Friday to Sunday
        else:
            first = number(base)
            last = 6 if step else first
        if last < first:
            raise BadSchedule(f"day-of-week range {base!r} runs backwards")
        days.update(d % 7 for d in range(first, last + 1, step or 1))
    return ",".join(_CRON_DAYS[d] for d in sorted(days))


def cron_trigger(expr: str, tz: tzinfo) -> Any:
    """A standard 5-field crontab (minute hour day month weekday) read in ``tz``."""
    fields = expr.split()
    if len(fields) != 5:
        raise BadSchedule(f"a cron expression has 5 fields (minute hour day-of-month month "
                          f"day-of-week), this one has {len(fields)}")
    minute, hour, day, month, weekday = fields
    try:
        return CronTrigger(minute=minute, hour=hour, day=day, month=month,
                           day_of_week=_weekdays(weekday), timezone=tz)
    except ValueError as err:
        raise BadSchedule(str(err)) from None


def cron_next(expr: str, after: float, tz: tzinfo) -> float | None:
    start = datetime.fromtimestamp(after, tz) + timedelta(microseconds=1)
    fire = cron_trigger(expr, tz).get_next_fire_time(None, start)
    return None if fire is None else float(fire.timestamp())


@dataclass(frozen=True, slots=True)
class CatchUp:
    """What one firing covers: the scheduled times up to now, and the next time after it."""

    next_at: float | None
    missed: int
    """Scheduled times up to now (1: only the one firing); at least this many if not exact."""
    exact: bool = True


def catch_up(r: Reminder, now: float, tz: tzinfo) -> CatchUp:
    """The firing of ``r`` at ``now``: exact for intervals, and for crons up to
    ``MAX_COUNTED`` times. The next time of a cron that missed more comes straight from
    ``now``, so the cost never grows with the time missed."""
    assert r.next_at is not None
    if r.every_seconds is not None:
        missed = math.floor((now - r.next_at) / r.every_seconds) + 1
        return CatchUp(r.next_at + missed * r.every_seconds, missed)
    if r.cron is None:
        return CatchUp(None, 1)
    trigger = cron_trigger(r.cron, tz)
    t: float | None = r.next_at
    missed = 0
    while t is not None and t <= now and missed < MAX_COUNTED:
        missed += 1
        fire = trigger.get_next_fire_time(
            None, datetime.fromtimestamp(t, tz) + timedelta(microseconds=1))
        t = None if fire is None else float(fire.timestamp())
    if t is not None and t <= now:  # counted as far as it is worth: on from now
        return CatchUp(cron_next(r.cron, now, tz), missed, exact=False)
    return CatchUp(t, missed)


def resumed_after(r: Reminder, due: float, counted: int, tz: tzinfo) -> float | None:
    """The time after the ``counted`` scheduled times from ``due`` (a firing stored before a
    crash covers those it counted then, however many came due since)."""
    if r.every_seconds is not None:
        return due + counted * r.every_seconds
    t: float | None = due
    for _ in range(counted):
        t = None if t is None or r.cron is None else cron_next(r.cron, t, tz)
    return t


def delivery_text(r: Reminder, due: float, late: bool, times: CatchUp, tz: tzinfo) -> str:
    """What the user reads (thread-bound), or the autonomous turn's instruction (system)."""
    when = local_text(due, tz)
    missed = times.missed
    if r.system:
        runs = f"more than {missed}" if not times.exact else str(missed)
        note = f", late: {runs} scheduled runs missed" if missed > 1 else (
            ", late" if late else "")
        return (f"System reminder #{r.id} (due {when}{note}): {r.text}\n"
                "Carry it out now with your tools; this turn was started by the schedule, "
                "not by a person.")
    if not late:
        return f"⏰ Reminder: {r.text}"
    if not times.exact:
        more = f", and {missed} or more times since"
    elif missed > 1:
        more = f", and {missed - 1} more time{'s' if missed > 2 else ''} since"
    else:
        more = ""
    return f"⏰ Reminder (late, was due {when}{more}): {r.text}"


@dataclass(frozen=True, slots=True)
class _Firing:
    reminder: Reminder
    due: float
    late: bool
    times: CatchUp
    inbound: Inbound


class Reminders:
    """Adds, cancels and fires reminders; the SQLite table is the source of truth."""

    def __init__(
        self, store: ReminderStore, bus: Bus, scheduler: Any, tz: tzinfo,
        clock: Callable[[], datetime], *, sees_all: Callable[[Inbound], bool] = lambda m: True,
        on_fired: Callable[[float], None] | None = None,
    ) -> None:
        self.store = store
        self.on_fired = on_fired
        """Told each new firing's seconds after its due time (the /metrics counters)."""
        self.sees_all = sees_all
        """Whether the sender of ``/reminders`` may see other conversations' reminders."""
        self.bus = bus
        self.scheduler = scheduler
        self.tz = tz
        self.clock = clock
        self._lock = asyncio.Lock()
        """Held while firing and while re-arming, so a new reminder never loses its wake-up."""
        self._started_at = math.inf
        self._mirror_due = asyncio.Event()
        self._mirror_task: asyncio.Task[None] | None = None
        bus.on_recover(Source.REMINDER, self.recovered)

    def now(self) -> float:
        return self.clock().timestamp()

    async def start(self) -> None:
        """Deliver what came due while the daemon was down (once, marked late), arm the timer."""
        started = time.monotonic()
        self._started_at = self.now()
        await self.wake()
        self._mirror_task = asyncio.create_task(self._keep_mirror(), name="reminders-mirror")
        self._mirror_due.set()  # written once at start, whatever changed while stopped
        log.info("reminders: %d active, scheduled in %.1f ms", await self.store.count_active(),
                 (time.monotonic() - started) * 1000)

    async def stop(self) -> None:
        """Remove the wake-up, wait for a firing in progress, bring the mirror up to date."""
        async with self._lock:
            if self.scheduler.get_job(WAKE_JOB) is not None:
                self.scheduler.remove_job(WAKE_JOB)
        if self._mirror_task is not None:
            self._mirror_task.cancel()
            await asyncio.gather(self._mirror_task, return_exceptions=True)
            self._mirror_task = None
            await self.store.write_mirror()

    async def _keep_mirror(self) -> None:
        """Rewrite data/reminders.json after changes, off the path of tools and firings; a
        burst of changes is coalesced into one or two writes."""
        while True:
            await self._mirror_due.wait()
            await asyncio.sleep(MIRROR_DELAY)
            self._mirror_due.clear()
            try:
                await self.store.write_mirror()
            except OSError:
                log.exception("reminders: could not write %s; trying again in %.0f s",
                              self.store.mirror, RETRY_SECONDS)
                await asyncio.sleep(RETRY_SECONDS)
                self._mirror_due.set()

    async def add(self, new: NewReminder) -> Reminder:
        if await self.store.count_active() >= MAX_ACTIVE:
            raise BadSchedule(f"there are {MAX_ACTIVE} active reminders already; cancel some "
                              "first")
        async with self._lock:
            reminder = await self.store.add(new)
            await self._arm()
        log.info("[%s] reminder #%d set for %s (%s%s)", new.thread_id, reminder.id,
                 local_text(new.next_at, self.tz), repeat_text(reminder),
                 ", system" if new.system else "")
        self._mirror_due.set()
        return reminder

    async def cancel(self, reminder_id: int) -> bool:
        async with self._lock:
            cancelled = await self.store.cancel(reminder_id)
            await self._arm()
        if cancelled:
            log.info("reminder #%d cancelled", reminder_id)
            self._mirror_due.set()
        return cancelled

    async def rearm(self, thread_id: ThreadId) -> None:
        """The thread's reminders were deleted with it: the timer is set for the next one
        left, and the mirror rewritten."""
        async with self._lock:
            await self._arm()
        self.store.changed_elsewhere()
        self._mirror_due.set()
        log.info("[%s] reminders of a deleted conversation unscheduled", thread_id)

    async def wake(self) -> None:
        """The APScheduler job: fire every due reminder, then arm for the next one.

        It always re-arms: a read or write that fails (a locked or refusing disk) arms a retry,
        since this one-shot job is the only timer; nothing else would fire again until the
        next add, cancel or restart.
        """
        failed = False
        async with self._lock:
            now = self.now()
            try:
                await self._fire_due(now)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("reminders: the due ones could not be fired; retrying in %.0f s",
                              RETRY_SECONDS)
                failed = True
            await self._arm(retry_at=now + RETRY_SECONDS if failed else None)
        self._mirror_due.set()

    async def _fire_due(self, now: float) -> None:
        """Fire every reminder due at ``now``, in batches: a start after a long stop may find
        thousands."""
        seen: set[int] = set()
        while True:
            batch = [r for r in await self.store.due(now, DUE_BATCH) if r.id not in seen]
            seen.update(r.id for r in batch)
            await self._fire(batch, now)
            if len(batch) < DUE_BATCH:
                return

    async def recovered(self, msg: Inbound) -> Inbound:
        """A firing the last run stored but did not deliver: marked late, with its original
        time, if it is late now (its text was written when it was on time)."""
        due = float(msg.meta.get("due", "nan"))
        if msg.meta.get("late") == "1" or not self.now() - due > LATE_AFTER_SECONDS:
            return msg  # as written (NaN: not a firing of ours; compares False)
        r = await self.store.get(int(msg.meta["reminder_id"]))
        if r is None:
            return msg
        missed = int(msg.meta.get("missed", "1"))
        times = CatchUp(None, missed, exact=msg.meta.get("exact", "1") == "1")
        text = delivery_text(r, due, True, times, self.tz)
        log.info("[%s] reminder #%d recovered %.0f s after its time: marked late",
                 msg.thread_id, r.id, self.now() - due)
        return replace(msg, text=text, meta={**msg.meta, "late": "1"})

    async def _fire(self, due: Sequence[Reminder], now: float) -> None:
        """Submit one firing of each reminder, then move each on: two writes for the batch,
        so a start that finds a thousand missed ones is not a thousand round trips."""
        firings = [self._firing(r, now) for r in due]
        if not firings:
            return
        submitted = await self.bus.submit_many([f.inbound for f in firings])
        # A firing already stored (a crash came before its row moved on) is the one sent: it
        # covers the times it counted then, so the row moves on from there and the next
        # firing, at once, counts the rest. Moved on by today's count, those went unsaid.
        counted = await self.store.times_counted(
            [f.inbound.client_id for f, (_, new) in zip(firings, submitted, strict=True)
             if not new])
        moves = [(f.reminder.id, f.due, f.times.next_at if f.inbound.client_id not in counted
                  or f.times.next_at is None or counted[f.inbound.client_id] >= f.times.missed
                  else resumed_after(f.reminder, f.due, counted[f.inbound.client_id], self.tz))
                 for f in firings]
        await self.store.advance(moves, now)
        for f, (_, is_new), (_, _, next_at) in zip(firings, submitted, moves, strict=True):
            r, times = f.reminder, f.times
            thread = f.inbound.thread_id
            log.info("[%s] reminder #%d fired%s%s; %s", thread, r.id,
                     f" {now - f.due:.1f} s late" if f.late else "",
                     f" ({'over ' if not times.exact else ''}{times.missed} missed periods)"
                     if times.missed > 1 else "",
                     f"next {local_text(next_at, self.tz)}" if next_at is not None else "done")
            if not is_new:
                log.info("[%s] reminder #%d was submitted before a restart; not sent twice",
                         thread, r.id)
            elif self.on_fired is not None:
                self.on_fired(now - f.due)

    def _firing(self, r: Reminder, now: float) -> _Firing:
        assert r.next_at is not None
        due = r.next_at
        late = due < self._started_at or now - due > LATE_AFTER_SECONDS
        times = catch_up(r, now, self.tz)
        text = delivery_text(r, due, late, times, self.tz)
        thread = system_thread(f"reminder-{r.id}") if r.system else r.thread_id
        inbound = Inbound(
            thread, text, sender="reminder", source=Source.REMINDER,
            client_id=f"reminder:{r.id}:{round(due * 1000)}", system=r.system,
            meta={"reminder_id": str(r.id), "due": str(due), "late": "1" if late else "0",
                  "missed": str(times.missed), "exact": "1" if times.exact else "0"},
        )
        return _Firing(r, due, late, times, inbound)

    async def _arm(self, retry_at: float | None = None) -> None:
        """Point the wake-up job at the earliest active reminder (caller holds the lock).

        If the table cannot be read, the job is armed to try again soon: it must never be
        left unarmed while reminders are active.
        """
        try:
            at = await self.store.next_due_at()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("reminders: could not read the next due time; trying again in "
                          "%.0f s", RETRY_SECONDS)
            at, retry_at = None, self.now() + RETRY_SECONDS
        if retry_at is not None:
            at = retry_at if at is None else min(at, retry_at)
        if at is None:
            if self.scheduler.get_job(WAKE_JOB) is not None:
                self.scheduler.remove_job(WAKE_JOB)
            return
        self.scheduler.add_job(
            self.wake, DateTrigger(datetime.fromtimestamp(at, self.tz)), id=WAKE_JOB,
            name="reminders: fire what is due", replace_existing=True, max_instances=8,
        )

    # -- /reminders --------------------------------------------------------------------

    async def cmd_reminders(self, msg: Inbound, args: str) -> str:
        reminders = await self.store.active()
        if not self.sees_all(msg):
            reminders = [r for r in reminders if r.thread_id == msg.thread_id]
        if not reminders:
            return ("No reminders. Ask for one in plain words, e.g. \"remind me in 10 minutes "
                    "to stretch\" or \"every weekday at 9, remind me to check the mail\".")
        shown = reminders[:50]
        lines = [f"Reminders ({len(reminders)}; times in {self.tz}):", ""]
        for r in shown:
            assert r.next_at is not None
            kind = "system (runs a task, shows nothing)" if r.system else "message"
            where = "this conversation" if r.thread_id == msg.thread_id else f"`{r.thread_id}`"
            lines.append(f"- #{r.id} **{local_text(r.next_at, self.tz)}** · {repeat_text(r)} · "
                         f"{kind} · {where}: {r.text}")
        if len(reminders) > len(shown):
            lines.append(f"- … and {len(reminders) - len(shown)} more (all are in "
                         f"data/{self.store.mirror.name})")
        return "\n".join(lines)
