"""Triggers: producers like any interface (reminders, heartbeats), putting Inbound work on the bus.

They never call the worker: a reminder or a review waits in its thread's lane like a user's
message, so it never races a turn in the same thread. Both run on one APScheduler
``AsyncIOScheduler`` inside the daemon's event loop, built here and owned by the App.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from datetime import datetime, tzinfo
from typing import Any
from zoneinfo import ZoneInfo

import tzlocal
from apscheduler.schedulers.asyncio import AsyncIOScheduler

from ganglion.messages import ThreadId

SYSTEM_PREFIX = "system:"


def system_thread(name: str) -> ThreadId:
    """A thread no interface owns (``system:heartbeat``, ``system:reminder-3``): an autonomous
    turn runs and keeps its history there, and what it writes reaches no chat."""
    return ThreadId(SYSTEM_PREFIX + name)


def is_system_thread(thread_id: str) -> bool:
    return thread_id.startswith(SYSTEM_PREFIX)


HEARTBEAT_THREAD = system_thread("heartbeat")
"""The global heartbeat review's thread (its history, and the reminders it sets)."""


def local_zone(name: str | None) -> tzinfo:
    """``scheduler.timezone`` as a zone; None is the machine's zone (with its DST rules)."""
    if name:
        return ZoneInfo(name)
    zone: tzinfo = tzlocal.get_localzone()
    return zone


def zone_clock(tz: tzinfo) -> Callable[[], datetime]:
    """The current time in ``tz``: what the model is told and what reminder times are read in."""

    def now() -> datetime:
        return datetime.now(tz)

    return now


def new_scheduler(tz: tzinfo) -> Any:
    """An AsyncIOScheduler for the running loop. Its per-job INFO lines are too chatty for the
    daemon's log (one per firing); ours say what matters."""
    logging.getLogger("apscheduler").setLevel(logging.WARNING)
    return AsyncIOScheduler(timezone=tz, job_defaults={
        "misfire_grace_time": None,  # late is better than never: never skip a run
        "coalesce": True,
    })


async def stop_scheduler(scheduler: Any) -> None:
    """Shut the scheduler down; its jobs' tasks are cancelled (a firing is idempotent)."""
    if scheduler.running:
        scheduler.shutdown(wait=False)
        await asyncio.sleep(0)  # AsyncIOScheduler shuts down on the loop's next pass
