"""Who may do what, and how much: roles, per-user rate limits and token quotas, usage records.

Place in the flow: the worker calls ``admit(msg)`` at the start of every turn, before the
model is asked; the LLM client reports every answer to ``charge``; the command table asks
``rank_of`` before running a command. Everything counted is a row in SQLite
(``storage/usage.py``), so windows, quotas and ``/stats`` survive restarts.

Roles: ``matrix.owner`` is the owner, ``matrix.trusted_users`` are trusted, every other
allowed Matrix user is a user. The web UI acts as the owner (only the token holder can open
it). Reminders and heartbeats run with the least rank and pay from their own budget
(``limits.autonomous_daily_tokens``), never from a user's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextvars import ContextVar
from datetime import datetime, timedelta

from ganglion.commands import CommandTable, Rank, parse_command
from ganglion.config import Config
from ganglion.durations import duration_text
from ganglion.llm.results import ChatResult
from ganglion.messages import Inbound, Source
from ganglion.storage.usage import Group, Payer, Tally, UsageLog

log = logging.getLogger(__name__)

AUTONOMOUS = "autonomous"
"""The account reminders and heartbeats are charged to."""
UNATTRIBUTED = Payer("(outside a turn)", "", "", "")
WINDOW_SECONDS = 60.0

# Who pays for the LLM calls of the running turn. A ContextVar, not a parameter: a turn's
# calls come from several places (the answer, compaction and the memory flush before it,
# /ask, the tools) that know nothing of accounting, and passing the payer down would thread
# it through the Compactor, the MemoryFlush and the LLM client's usage sink only to reach
# ``charge``. It is not shared state either: asyncio gives every task its own copy of the
# context, each turn runs in its own task, so the value ``admit`` sets belongs to that turn
# alone (and to what it awaits); concurrent turns never see each other's, and calls outside
# any turn (the start-up probe) see None and are charged to UNATTRIBUTED.
_payer: ContextVar[Payer | None] = ContextVar("ganglion_payer", default=None)

LocalClock = Callable[[], datetime]


def _local_now() -> datetime:
    return datetime.now().astimezone()


class Access:
    def __init__(self, config: Config, usage: UsageLog, *, clock: LocalClock = _local_now,
                 on_charged: Callable[[str, int], None] | None = None) -> None:
        self._matrix = config.matrix
        self._limits = config.limits
        self._usage = usage
        self._clock = clock
        self._on_charged = on_charged
        """Told each answer's account and tokens (the /metrics counter)."""

    # -- roles ---------------------------------------------------------------------------------

    @property
    def owner(self) -> str | None:
        """matrix.owner."""
        return self._matrix.owner

    def rank_of(self, msg: Inbound) -> Rank:
        if msg.source is Source.WEB:
            return Rank.OWNER
        if msg.source is Source.MATRIX:
            if self._matrix.owner is not None and msg.sender == self._matrix.owner:
                return Rank.OWNER
            if msg.sender in self._matrix.trusted_users:
                return Rank.TRUSTED
        return Rank.USER

    @staticmethod
    def payer_of(msg: Inbound) -> Payer:
        autonomous = msg.source in (Source.REMINDER, Source.HEARTBEAT)
        account = AUTONOMOUS if autonomous else msg.sender
        return Payer(account, msg.sender, msg.thread_id, msg.source.value)

    # -- limits --------------------------------------------------------------------------------

    async def admit(self, msg: Inbound) -> str | None:
        """At the start of a turn: None to go ahead, "" to skip it silently, else the reply
        that refuses it.

        Every turn's LLM calls are charged to its payer from here on. Commands pass freely
        (``/ask`` checks the limits itself, see ``check``), and so do reminders a person
        asked for: they are delivered word for word, without the model.
        """
        _payer.set(self.payer_of(msg))
        if parse_command(msg.text) is not None:
            return None
        if msg.source is Source.REMINDER and not msg.system:
            return None
        return await self.check(msg)

    async def check(self, msg: Inbound) -> str | None:
        """Count a message that will reach the model, unless a limit refuses it."""
        payer = self.payer_of(msg)
        _payer.set(payer)
        autonomous = payer.account == AUTONOMOUS
        per_minute, per_day = self.limits_for(msg)
        now = self._clock()
        day_start = now.replace(hour=0, minute=0, second=0, microsecond=0)
        admission = await self._usage.admit(
            payer, window_start=now.timestamp() - WINDOW_SECONDS, max_in_window=per_minute,
            day_start=day_start.timestamp(), max_tokens_today=per_day, now=now.timestamp())
        if admission.admitted:
            return None
        retry = now
        reasons: list[str] = []
        if per_minute is not None and len(admission.recent) >= per_minute:
            oldest = admission.recent[len(admission.recent) - per_minute]
            retry = max(retry, datetime.fromtimestamp(oldest + WINDOW_SECONDS, now.tzinfo))
            reasons.append(f"at most {per_minute} messages a minute")
        if per_day is not None and admission.tokens_today >= per_day:
            retry = max(retry, day_start + timedelta(days=1))
            reasons.append(f"{admission.tokens_today:,} of {per_day:,} tokens used today")
        log.info("[%s] %s refused (%s); may try again at %s", msg.thread_id, payer.account,
                 "; ".join(reasons), retry.isoformat(timespec="seconds"))
        if autonomous:
            log.warning("[%s] autonomous turn skipped: limits.autonomous_daily_tokens is used "
                        "up until midnight", msg.thread_id)
            if msg.meta.get("manual") != "1":
                return ""  # a scheduled review: the log says it, the chat stays quiet
            return ("Skipped: today's token budget for reminders and heartbeats "
                    "(limits.autonomous_daily_tokens) is used up until midnight.")
        wait = max(1, round((retry - now).total_seconds()))
        return (f"Limit reached ({'; '.join(reasons)}). You may try again in "
                f"{duration_text(wait, round_up=True)}, at {retry.strftime('%H:%M:%S')}.")

    def limits_for(self, msg: Inbound) -> tuple[int | None, int | None]:
        """(messages per minute, tokens per day) for this message's payer; None = no limit."""
        if msg.source in (Source.REMINDER, Source.HEARTBEAT):
            return None, self._limits.autonomous_daily_tokens
        if self._limits.exempt_owner and self.rank_of(msg) is Rank.OWNER:
            return None, None
        return self._limits.messages_per_minute, self._limits.daily_tokens

    async def charge(self, result: ChatResult) -> None:
        """The LLM client's usage sink: one row per answer, charged to the turn's payer."""
        payer = _payer.get() or UNATTRIBUTED
        if self._on_charged is not None:
            self._on_charged(payer.account,
                             result.usage.prompt_tokens + result.usage.completion_tokens)
        try:
            await self._usage.record_call(
                payer, model=result.model, endpoint=result.endpoint,
                prompt_tokens=result.usage.prompt_tokens,
                completion_tokens=result.usage.completion_tokens,
                now=self._clock().timestamp())
        except Exception:  # statistics must never cost the user an answer
            log.exception("[%s] could not record usage", payer.thread_id)

    # -- /stats ------------------------------------------------------------------------------

    def register(self, commands: CommandTable) -> None:
        commands.add("stats", "/stats", "messages and tokens per user and per thread",
                     self._cmd_stats)

    async def _cmd_stats(self, msg: Inbound, args: str) -> str:
        payer = self.payer_of(msg)
        # Other people's ids and rooms are for the owner and trusted users; a user sees
        # their own figures, the totals, and the others only counted.
        named = self.rank_of(msg) >= Rank.TRUSTED
        stats = await self._usage.stats(payer.account, payer.thread_id, top=5 if named else 0,
                                        apart=() if named else (AUTONOMOUS,))
        if stats.since is None:
            return "No usage recorded yet."
        since = datetime.fromtimestamp(stats.since, self._clock().tzinfo)
        lines = [
            f"Usage since {since.strftime('%Y-%m-%d %H:%M')} (kept across restarts):",
            f"- everyone: {_tally(stats.total)}",
            f"- you ({payer.account}): {_tally(stats.this_account)}",
            f"- this thread: {_tally(stats.this_thread)}",
        ]
        if named:
            lines += [
                "", "Top users:",
                *(f"{i}. {t.key}: {_tally(t)}" for i, t in enumerate(stats.top_accounts, 1)),
                "", "Top threads:",
                *(f"{i}. {t.key}: {_tally(t)}" for i, t in enumerate(stats.top_threads, 1)),
            ]
        else:
            others, threads = stats.other_accounts, stats.other_threads
            lines += [
                *(f"- {t.key}: {_tally(t)} (reminders and heartbeats)" for t in stats.apart),
                f"- {_count(others.count, 'other user')}: {_tally(others)}",
                f"- {_count(threads.count, 'other thread')}: {_tally(threads)}",
                "(Who they are is shown to trusted users and the owner only.)",
            ]
        per_minute, per_day = self.limits_for(msg)
        if per_minute is None and per_day is None:
            lines += ["", "Your limits: none."]
        else:
            now = self._clock()
            today = await self._usage.tokens_since(
                payer.account, now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp())
            parts = [f"{per_minute} messages a minute" if per_minute else "",
                     f"{per_day:,} tokens a day ({today:,} used today)" if per_day else ""]
            lines += ["", "Your limits: " + "; ".join(p for p in parts if p) + "."]
        return "\n".join(lines)


def _tally(t: Tally | Group) -> str:
    return f"{_count(t.messages, 'message')}, {t.tokens:,} tokens"


def _count(n: int, noun: str) -> str:
    return f"{n:,} {noun}{'s' if n != 1 else ''}"

