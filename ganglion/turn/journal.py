"""The turn-step journal: each tool call and result kept as it happens, for a re-run to resume."""

from __future__ import annotations

import logging
import sqlite3
from typing import Any

from ganglion.messages import Inbound
from ganglion.storage.history import History, NewMessage

log = logging.getLogger(__name__)

CUT_OFF = ("error: this call was cut off before its result came back (a stop or a restart). "
           "It may have taken effect: check (for example with list_reminders or read_file) "
           "before you repeat it.")
"""The result a tool call gets when the turn that made it ended while it ran."""


class StepJournal:
    """A turn's tool exchange, kept outside its final transaction (``turn_steps``): a crash
    or a Stop does not lose what the tools did, and a re-run does not do it again."""

    def __init__(self, history: History) -> None:
        self.history = history

    async def kept(self, msg: Inbound, *, or_none: bool = False) -> list[NewMessage]:
        """The tool exchange an earlier run of this turn (or this run, ending early) got
        through, a call cut off given its ``CUT_OFF`` result. ``or_none``: nothing when it
        cannot be read (a turn ending on a database error still ends)."""
        if not msg.id:
            return []
        try:
            return with_cut_off_results(await self.history.steps(msg.id))
        except sqlite3.Error as err:
            if not or_none:
                raise
            log.warning("[%s] could not read the turn's tool steps: %s", msg.thread_id, err)
            return []

    async def add(self, msg: Inbound, new: list[NewMessage], step: NewMessage) -> None:
        """Add a message of the tool exchange to the turn, and keep it at once (a re-run of
        this turn resumes after it)."""
        new.append(step)
        if msg.id:
            await self.history.add_step(msg.id, len(new) - 1, step)


def tool_steps(new: list[NewMessage]) -> int:
    """How many model calls of the turn asked for tools (each counts against the limit)."""
    return sum(1 for m in new if m.tool_calls)


def with_cut_off_results(steps: list[NewMessage]) -> list[NewMessage]:
    """An earlier run's tool exchange, each call that got no result given ``CUT_OFF`` right
    after its call's other results (the model's API refuses a tool call without its result,
    and results out of place). Derived each time, never stored: the positions say it."""
    out: list[NewMessage] = []
    calls: list[dict[str, Any]] = []  # the last assistant message's, and their results
    answered: set[str | None] = set()
    for m in [*steps, None]:
        if m is not None and m.role == "tool":
            answered.add(m.tool_call_id)
            out.append(m)
            continue
        out += [NewMessage("tool", CUT_OFF, tool_call_id=c["id"], name=c["function"]["name"],
                           visible=False) for c in calls if c["id"] not in answered]
        if m is not None:
            out.append(m)
            calls, answered = list(m.tool_calls or ()), set()
    return out
