"""Heartbeat reviews: a timer that puts reviews on the bus (Heartbeat), and the shape of a review
turn that the worker asks for (HeartbeatReviews).

Cost control, in order: no review when there is nothing to review (HEARTBEATS.txt empty and
no reminder due before the next review); a light context (the system prompt and the last
``heartbeat.context_messages`` messages, not the history); an answer that is only the
sentinel reaches nobody and leaves no trace in the conversation; every review's tokens are
logged and summed per local day in SQLite, and ``heartbeat.daily_token_budget`` stops the
automatic reviews for the rest of the day. That is said once a day: one warning in the log
and one notice in the owner's most recently active conversation (none if the owner wrote
nowhere lately), from the first round that finds the budget used up (the review that
reached it says so only in its own info line).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import datetime, tzinfo
from typing import Any

from apscheduler.triggers.interval import IntervalTrigger

from ganglion.bus import Bus
from ganglion.config import HeartbeatConfig
from ganglion.messages import Inbound, Source, ThreadId
from ganglion.router import Router
from ganglion.storage.files import HEARTBEATS, DataFiles
from ganglion.storage.history import NewMessage, StoredMessage
from ganglion.storage.reminders import HeartbeatLedger, Reminder, ReminderStore
from ganglion.tokens import message_tokens
from ganglion.triggers import HEARTBEAT_THREAD, is_system_thread
from ganglion.triggers.reminders import local_text
from ganglion.untrusted import neutralise

log = logging.getLogger(__name__)

"""The global review's own thread: no interface owns it, so nothing it writes is shown."""
JOB = "heartbeat"

THREAD_PROMPT = (
    "Heartbeat review, {now}. This message comes from a timer, not from the user. Read "
    "HEARTBEATS.txt (your active goals and working memory, in the system prompt) against the "
    "last messages of this conversation. If something there needs the user's attention now "
    "(a follow-up that is due, a deadline coming up, a goal that is stuck), write that "
    "message to the user: briefly, as you would open a conversation. You may update "
    "HEARTBEATS.txt or set reminders with your tools. If nothing is worth saying now, answer "
    "exactly {sentinel} and nothing else: the user then sees nothing."
)
GLOBAL_PROMPT = (
    "Global heartbeat review, {now}. This turn comes from a timer and nothing you write is "
    "shown to anyone. Keep HEARTBEATS.txt current: drop goals that are done, note what "
    "changed, and use your tools if something needs doing (a reminder for later, a note). "
    "Then answer {sentinel}."
)
MANUAL_NOTE = (
    " The user asked for this review with /heartbeat just now; if there is nothing to say, "
    "answer {sentinel} and they will be told so."
)


def has_goals(heartbeats: str) -> bool:
    """HEARTBEATS.txt has content: a line that is neither blank nor a ``#`` comment."""
    return any(s and not s.startswith("#") for s in (ln.strip() for ln in heartbeats.splitlines()))


def review_prompt(
    now: datetime, sentinel: str, due: Sequence[Reminder], tz: tzinfo, *, is_global: bool,
    manual: bool = False,
) -> str:
    """The review's instruction (the user-role message of its light context)."""
    when = f"{now:%A %Y-%m-%d %H:%M} ({now.tzname()})"
    text = (GLOBAL_PROMPT if is_global else THREAD_PROMPT).format(now=when, sentinel=sentinel)
    if manual:
        text += MANUAL_NOTE.format(sentinel=sentinel)
    if due:
        text += ("\n\nReminders due before the next review (they are delivered on their own; "
                 "do not repeat them):\n")
        # A reminder's text came through a tool call, maybe from a page or a file: untrusted.
        text += "\n".join(f"- #{r.id} {local_text(r.next_at or 0, tz)}: {neutralise(r.text)}"
                          for r in due)
    return text


class HeartbeatReviews:
    """How the worker runs a heartbeat turn (it implements ``ganglion.worker.Reviews``)."""

    def __init__(
        self, config: HeartbeatConfig, ledger: HeartbeatLedger, clock: Callable[[], datetime]
    ) -> None:
        self.config = config
        self.ledger = ledger
        self.clock = clock

    def day(self) -> str:
        """The local calendar day the budget counts against."""
        return self.clock().date().isoformat()

    async def budget_left(self) -> int | None:
        """Tokens the automatic reviews may still use today; None without a budget."""
        budget = self.config.daily_token_budget
        if budget is None:
            return None
        spent, _ = await self.ledger.spent(self.day())
        return budget - spent

    async def context(
        self, msg: Inbound, history: Sequence[StoredMessage]
    ) -> list[StoredMessage] | None:
        """The light context: the last few plain messages and the review's instruction.

        The instruction is not stored in the conversation. None skips the review (the budget
        ran out while it waited in its thread's lane).
        """
        if msg.meta.get("manual") != "1":
            left = await self.budget_left()
            if left is not None and left <= 0:
                log.info("[%s] heartbeat review skipped: today's token budget is used up",
                         msg.thread_id)
                return None
        keep = self.config.context_messages
        plain = [m for m in history
                 if m.role in ("user", "assistant") and m.content and not m.tool_calls]
        recent = plain[-keep:] if keep else []
        prompt = StoredMessage(0, msg.thread_id, "user", msg.text,
                               tokens=message_tokens(msg.text))
        return [*recent, prompt]

    def is_silent(self, answer: str) -> bool:
        """Only the sentinel as the whole answer (trimmed of whitespace, light markup such as
        ``**`` or backticks, and a final period), or nothing at all. A sentence that mentions
        the sentinel says something, and is delivered as written."""
        markup = r"[\s*_`~]*"
        whole = rf"{markup}{re.escape(self.config.sentinel)}{markup}[.!]?{markup}"
        return not answer.strip() or re.fullmatch(whole, answer) is not None

    async def finished(
        self, msg: Inbound, new: Sequence[NewMessage], tokens: int
    ) -> list[NewMessage]:
        """Count the review's tokens; keep and deliver only an answer worth sending."""
        manual = msg.meta.get("manual") == "1"
        if not new and not tokens:
            return []  # skipped before the model was asked
        day = self.day()
        total = await self.ledger.add(day, tokens)
        before = total - tokens  # from the same write: two reviews ending together differ
        answer = next((m for m in reversed(new) if m.role == "assistant" and not m.tool_calls),
                      None)
        silent = answer is None or self.is_silent(answer.content)
        kept: list[NewMessage] = []
        for m in new:
            if m is answer and not silent:
                kept.append(replace(m, content=m.content.strip(), deliver=not msg.system))
            elif m.role == "notice" and manual:
                kept.append(m)  # an error the person who asked should see
            else:  # stored for the record only: not in the conversation, not shown
                kept.append(replace(m, deliver=False, visible=False, in_context=False))
        if manual and silent and not any(m.role == "notice" for m in new):
            kept.append(NewMessage("notice", "Heartbeat review: nothing to report.",
                                   in_context=False, deliver=True))
        budget = self.config.daily_token_budget
        reached = budget is not None and before < budget <= total
        log.info("[%s] heartbeat review: %d tokens, %s; today %d%s%s", msg.thread_id, tokens,
                 "silent" if silent else "spoke", total,
                 f" of {budget}" if budget is not None else "",
                 ": this review reached the daily budget" if reached else "")
        return kept


class Heartbeat:
    """The timer: every ``review_interval_minutes``, one global review and one per active
    conversation, each submitted to the bus (so it waits for a user's turn in progress)."""

    def __init__(  # noqa: PLR0917  (the composition root's contract)
        self,
        config: HeartbeatConfig,
        reviews: HeartbeatReviews,
        ledger: HeartbeatLedger,
        reminders: ReminderStore,
        bus: Bus,
        router: Router,
        files: DataFiles,
        scheduler: Any,
        tz: tzinfo,
        *,
        owner: str | None = None,
    ) -> None:
        self.config = config
        self.owner = owner
        """matrix.owner: the budget notice goes to the owner (their room, or a web tab)."""
        self.reviews = reviews
        self.ledger = ledger
        self.reminders = reminders
        self.bus = bus
        self.router = router
        self.files = files
        self.scheduler = scheduler
        self.tz = tz
        self.interval = config.review_interval_minutes * 60
        self._lock = asyncio.Lock()

    def start(self) -> None:
        if not self.config.enabled:
            log.info("heartbeat: off (heartbeat.enabled); /heartbeat still reviews on request")
            return
        self.scheduler.add_job(self.tick, IntervalTrigger(seconds=self.interval, timezone=self.tz),
                               id=JOB, name="heartbeat reviews", replace_existing=True,
                               max_instances=1)
        log.info("heartbeat: a review round every %.4g min", self.interval / 60)

    async def stop(self) -> None:
        async with self._lock:  # a round in progress finishes submitting first
            if self.scheduler.get_job(JOB) is not None:
                self.scheduler.remove_job(JOB)

    async def tick(self) -> None:
        """One round (the APScheduler job). A failure is logged; the next round tries again."""
        async with self._lock:
            try:
                await self._round()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("heartbeat: the review round failed; the next one tries again")

    async def _round(self) -> None:
        left = await self.reviews.budget_left()
        if left is not None and left <= 0:
            await self._say_budget_reached()
            return
        now = self.reviews.clock()
        goals = has_goals(self.files.read(HEARTBEATS))
        due = await self.reminders.due_before(now.timestamp() + self.interval)
        submitted = 0
        if goals or due:
            submitted += await self.submit(HEARTBEAT_THREAD, due)
        if self.config.active_hours > 0:
            since = now.timestamp() - self.config.active_hours * 3600
            for tid in await self.ledger.active_threads(since):
                mine = [r for r in due if r.thread_id == tid and not r.system]
                if goals or mine:
                    submitted += await self.submit(tid, mine)
        if not submitted:
            log.debug("heartbeat: nothing to review (HEARTBEATS.txt is empty, no reminder due)")

    async def submit(self, thread_id: ThreadId, due: Sequence[Reminder], *,
                     manual: bool = False) -> bool:
        """Queue one review of ``thread_id``; False if one is queued or running already.

        The caller holds ``_lock``: the check and the queueing are one step.
        """
        if await self.ledger.review_pending(thread_id):
            return False
        now = self.reviews.clock()
        is_global = is_system_thread(thread_id)
        text = review_prompt(now, self.config.sentinel, due, self.tz, is_global=is_global,
                             manual=manual)
        inbound = Inbound(
            thread_id, text, sender="heartbeat", source=Source.HEARTBEAT,
            client_id=f"heartbeat:{round(now.timestamp() * 1000)}", system=is_global,
            meta={"manual": "1"} if manual else {},
        )
        _, is_new = await self.bus.submit(inbound)
        return is_new

    async def _say_budget_reached(self) -> None:
        """Once a day: the log, and the owner's most recent conversation (a web tab, since
        the web UI acts as the owner, or matrix.owner's room), never another user's."""
        day = self.reviews.day()
        if not await self.ledger.mark_budget_noticed(day):
            return
        spent, reviews = await self.ledger.spent(day)
        text = (f"Heartbeat reviews are paused until tomorrow: today's {reviews} reviews used "
                f"{spent:,} tokens of the {self.config.daily_token_budget:,} allowed "
                "(heartbeat.daily_token_budget). Reminders still arrive, and /heartbeat still "
                "runs a review when you ask.")
        log.warning("heartbeat: %s", text)
        since = self.reviews.clock().timestamp() - max(self.config.active_hours, 24) * 3600
        thread = await self.ledger.owner_thread(since, self.owner)
        if thread is not None:
            await self.router.broadcast(text, thread)

    # -- /heartbeat ----------------------------------------------------------------------

    async def cmd_heartbeat(self, msg: Inbound, args: str) -> str:
        """Review this conversation now: asked for, so it runs even with HEARTBEATS.txt empty
        (the cost rule "nothing to review, no review" is for the timer's rounds)."""
        if is_system_thread(msg.thread_id):
            return "Heartbeat reviews are for conversations; this is an autonomous thread."
        async with self._lock:  # a round may be submitting this thread's review right now
            now = self.reviews.clock().timestamp()
            due = [r for r in await self.reminders.due_before(now + self.interval)
                   if r.thread_id == msg.thread_id and not r.system]
            if not await self.submit(msg.thread_id, due, manual=True):
                return "A review of this conversation is already queued."
        notes = []
        if not has_goals(self.files.read(HEARTBEATS)):
            notes.append("HEARTBEATS.txt is empty, so only the last messages are reviewed; "
                         "tell me a goal to keep an eye on and I will note it there.")
        left = await self.reviews.budget_left()
        if left is not None and left <= 0:
            notes.append("Today's budget for automatic reviews is used up; this one runs "
                         "because you asked.")
        return " ".join(["Reviewing this conversation now.", *notes])
