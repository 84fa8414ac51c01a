"""Reminder tools for the model: set_reminder, list_reminders, cancel_reminder.

Times are read in ``scheduler.timezone``, the zone the model is told in its prompt. Every
refusal is a ToolError whose text tells the model what to send instead (with today's date,
so "tomorrow at 9" can be put right on the next try).

Which reminders a turn may list and cancel: those set in its own conversation. An
autonomous turn has no person behind it and reads files that tools write (MEMORIES.txt,
HEARTBEATS.txt), so a prompt injected there must not reach the user's reminders: a system
reminder's task sees its own reminder and those it set; the global heartbeat review may list
every reminder (to keep HEARTBEATS.txt current) but cancel only those it set itself.
"""

from __future__ import annotations

import math
import re
from datetime import datetime, timedelta

from ganglion.durations import duration_text
from ganglion.errors import BadArguments, ToolError
from ganglion.storage.reminders import NewReminder, Reminder, repeat_text
from ganglion.tools.registry import ToolContext, ToolFunc
from ganglion.triggers import HEARTBEAT_THREAD, is_system_thread, system_thread
from ganglion.triggers.reminders import BadSchedule, Reminders, cron_next, local_text

MAX_TEXT = 2000
MAX_AHEAD_MINUTES = 10 * 366 * 24 * 60
_DATE_ONLY = re.compile(r"\A\d{4}-\d{2}-\d{2}\Z")


TOOLS = ("set_reminder", "list_reminders", "cancel_reminder")


class ReminderTools:
    """The model's side of ``ganglion.triggers.reminders.Reminders``."""

    def __init__(self, reminders: Reminders, min_repeat_minutes: float) -> None:
        self.reminders = reminders
        self.min_repeat_minutes = min_repeat_minutes

    def tools(self) -> list[ToolFunc]:
        return [getattr(self, name) for name in TOOLS]

    @staticmethod
    def signatures() -> list[ToolFunc]:
        """The tools read off the class: their schemas, for what a prompt costs
        (``toolbox.fixed_prompt_tokens``), with no scheduler or bus behind them."""
        return [getattr(ReminderTools, name) for name in TOOLS]

    async def set_reminder(
        self,
        ctx: ToolContext,
        *,
        text: str,
        at: str | None = None,
        in_minutes: float | None = None,
        every_minutes: float | None = None,
        cron: str | None = None,
        system: bool = False,
    ) -> str:
        """Set a reminder. It is always delivered at its time, in this conversation, word for
        word; or, with system=true, it starts an autonomous task instead. Say when with
        exactly one of: at, in_minutes, cron; or every_minutes alone (first time one interval
        from now). Times are local: the zone is given with "Current local time".

        Args:
            text: What to remind the user of, as they should read it ("Call the dentist").
                With system=true: the instruction for the task.
            at: A local date and time in ISO 8601, "YYYY-MM-DDTHH:MM", e.g. "2030-01-31T09:00".
                Work out the date yourself ("tomorrow at 9" is tomorrow's date at 09:00). An
                explicit offset such as "+01:00" is honoured; without one the local zone applies.
            in_minutes: Minutes from now: 10 for "in 10 minutes", 90 for "in an hour and a
                half", 0.5 for "in 30 seconds".
            every_minutes: Repeat every this many minutes (60 = hourly). The first time is
                at or in_minutes if given. For "every weekday at 9" use cron instead.
            cron: Repeat on a calendar, a 5-field cron expression "minute hour day month
                weekday" in local time; weekday 0 or 7 = Sunday, 1 = Monday. "0 9 * * 1-5" is
                9:00 on weekdays, "30 18 * * *" is 18:30 every day. Do not combine with at,
                in_minutes or every_minutes.
            system: false (default): the user gets the text as a message at that time. true:
                no message; an autonomous task runs with the text as its instruction.
        """
        text = text.strip()
        if not text:
            raise BadArguments("text is empty: say what to remind of, e.g. \"Call the dentist\"")
        if len(text) > MAX_TEXT:
            raise BadArguments(f"text is {len(text)} characters; keep it under {MAX_TEXT}")
        if not system and is_system_thread(ctx.thread_id):
            raise BadArguments("this is an autonomous task with no conversation, so a message "
                               "reminder set here would reach nobody: use system=true for a "
                               "task later")
        now = self.reminders.clock()
        start = [name for name, v in (("at", at), ("in_minutes", in_minutes)) if v is not None]
        if len(start) == 2:
            raise BadArguments("give either at or in_minutes, not both")
        if cron is not None and (start or every_minutes is not None):
            raise BadArguments("cron sets the times by itself: leave out at, in_minutes and "
                               "every_minutes")
        if cron is None and every_minutes is None and not start:
            raise BadArguments("say when: at (local \"YYYY-MM-DDTHH:MM\"), in_minutes, "
                               "every_minutes or cron")
        every = None
        if every_minutes is not None:
            if not math.isfinite(every_minutes) or every_minutes < self.min_repeat_minutes:
                raise BadArguments(f"every_minutes must be at least {self.min_repeat_minutes:g} "
                                   "(scheduler.min_repeat_minutes)")
            every = every_minutes * 60
        if in_minutes is not None:
            if not math.isfinite(in_minutes) or not 0 < in_minutes <= MAX_AHEAD_MINUTES:
                raise BadArguments("in_minutes must be more than 0 (0.5 is 30 seconds) and "
                                   "within ten years")
            first = now.timestamp() + in_minutes * 60
        elif at is not None:
            first = self._parse_at(at, now)
        elif cron is not None:
            try:
                next_at = cron_next(cron, now.timestamp(), self.reminders.tz)
            except BadSchedule as err:
                raise BadArguments(f"cron {cron!r}: {err}; e.g. \"0 9 * * 1-5\" is 9:00 on "
                                   "weekdays") from None
            if next_at is None:
                raise BadArguments(f"cron {cron!r} never matches a date; check day and month")
            first = next_at
        else:
            assert every is not None
            first = now.timestamp() + every
        new = NewReminder(ctx.thread_id, text, first, system=system, cron=cron,
                          every_seconds=every, created_by=ctx.sender)
        try:
            reminder = await self.reminders.add(new)
        except BadSchedule as err:
            raise BadArguments(str(err)) from None
        return self._confirmation(reminder, first - now.timestamp())

    async def list_reminders(self, ctx: ToolContext) -> str:
        """List the active reminders of this conversation: number, next time, repeat, text."""
        everything = await self.reminders.store.active()
        tz = self.reminders.tz

        def line(r: Reminder, where: str = "") -> str:
            return (f"- #{r.id} {local_text(r.next_at or 0, tz)}, {repeat_text(r)}"
                    f"{', system task' if r.system else ''}{where}: {r.text}")

        if ctx.thread_id == HEARTBEAT_THREAD:
            lines = [line(r, ", set by you" if _own(r, ctx) else f", in {r.thread_id}")
                     for r in everything]
            if not lines:
                return "No active reminders."
            return "\n".join([f"{len(lines)} active reminder(s) in every conversation (you "
                              "may cancel only those set by you):", *lines])
        mine = [r for r in everything if _own(r, ctx)]
        lines = [line(r) for r in mine]
        head = (f"{len(mine)} active reminder(s) in this conversation" if mine else
                "No active reminders in this conversation.")
        hidden = len(everything) - len(mine)
        if hidden:
            head += (f" ({hidden} more in other conversations; the user sees all of them "
                     "with /reminders)")
        return "\n".join([head + (":" if mine else ""), *lines])

    async def cancel_reminder(self, ctx: ToolContext, reminder_id: int) -> str:
        """Cancel a reminder of this conversation (recurring ones stop for good).

        Args:
            reminder_id: The reminder's number, as set_reminder or list_reminders gave it.
        """
        r = await self.reminders.store.get(reminder_id)
        if r is not None and not _own(r, ctx) and ctx.thread_id == HEARTBEAT_THREAD:
            raise ToolError(f"reminder #{reminder_id} was set in {r.thread_id}, not by you: "
                            "an autonomous review may cancel only the reminders it set; the "
                            "user can cancel it in that conversation")
        if r is None or not _own(r, ctx):
            raise ToolError(f"there is no reminder #{reminder_id} in this conversation; "
                            "list_reminders shows their numbers")
        if r.status != "active":
            state = "was cancelled already" if r.status == "cancelled" else "has fired and is done"
            raise ToolError(f"reminder #{reminder_id} {state}; nothing to cancel")
        await self.reminders.cancel(reminder_id)
        return f"Reminder #{reminder_id} cancelled ({repeat_text(r)}: {r.text})."

    # -- helpers ---------------------------------------------------------------------------

    def _parse_at(self, at: str, now: datetime) -> float:
        tz = self.reminders.tz
        tomorrow = now + timedelta(days=1)
        hint = (f"it is now {now:%Y-%m-%dT%H:%M} ({now:%A}) in {tz}; tomorrow at 9 would be "
                f"\"{tomorrow:%Y-%m-%d}T09:00\"")
        value = at.strip()
        if _DATE_ONLY.match(value):
            raise BadArguments(f"at {at!r} has no time of day: give \"YYYY-MM-DDTHH:MM\"; {hint}")
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            raise BadArguments(f"at {at!r} is not a local date and time like "
                               f"\"{now:%Y-%m-%d}T18:30\" (use in_minutes for relative times); "
                               f"{hint}") from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=tz)  # wall-clock time in the configured zone
        first = when.timestamp()
        if first <= now.timestamp():
            raise BadArguments(f"at {at!r} has passed; {hint}. Give a time in the future")
        if first - now.timestamp() > MAX_AHEAD_MINUTES * 60:
            raise BadArguments(f"at {at!r} is more than ten years away")
        return first

    def _confirmation(self, r: Reminder, seconds_ahead: float) -> str:
        tz = self.reminders.tz
        assert r.next_at is not None
        when = datetime.fromtimestamp(r.next_at, tz)
        repeat = ""
        if r.every_seconds is not None:
            repeat = f", then every {duration_text(r.every_seconds)}"
        elif r.cron is not None:
            repeat = f", then on cron \"{r.cron}\" ({tz} time)"
        what = ("At that time an autonomous task runs with the text as its instruction; the "
                "user sees nothing." if r.system else
                "It will be delivered in this conversation, word for word.")
        return (f"Reminder #{r.id} set for {when:%A %Y-%m-%d %H:%M} {when.tzname()} "
                f"(in {duration_text(seconds_ahead)}){repeat}. {what}")


def _own(r: Reminder, ctx: ToolContext) -> bool:
    """Set in this conversation, or ``r`` is the system reminder whose task this turn is."""
    return r.thread_id == ctx.thread_id or system_thread(f"reminder-{r.id}") == ctx.thread_id
