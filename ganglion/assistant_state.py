"""The assistant's state as the web page's settings view shows and changes it.

Place in the flow: built by ``app.py`` and handed to the web edge
(``interfaces/web_settings.py``) as its ``Settings``. Every change goes through the verb the
rest of the daemon uses: the memory tools' locked, checked, atomic write
(``MemoryTools.rewrite_if``), the reminder trigger's ``cancel`` (the table row and the
scheduler's wake-up), ``/model``'s ``set_model``. It reads ``/tools``'s rows, the endpoint
pool and the usage log. Nothing secret leaves here: no key, no token, no MCP environment;
URLs and server messages pass through the log's secret mask.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import date, datetime, timedelta, tzinfo
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ganglion.errors import InputRejected, ToolError
from ganglion.llm.endpoints import EndpointPool
from ganglion.messages import ThreadId
from ganglion.model_commands import ModelCommands
from ganglion.storage.conversations import Conversations
from ganglion.storage.files import HEARTBEATS, MEMORIES, SKILLS_DIR, DataFiles
from ganglion.storage.reminders import repeat_text
from ganglion.storage.usage import UsageLog
from ganglion.tools.listing import tool_rows
from ganglion.tools.memory import Conflict, MemoryTools, version_of
from ganglion.tools.policy import ToolRunner
from ganglion.triggers.reminders import Reminders, local_text

if TYPE_CHECKING:
    from ganglion.tools.mcp.manager import ServerState

Frame = dict[str, Any]
REMINDERS_SHOWN = 200
"""The soonest reminders listed (the rest are counted; all are in data/reminders.json)."""
DAYS_SHOWN = 7


@dataclass(frozen=True, slots=True)
class StateParts:
    """The parts the view reads and changes (the composition root's)."""

    files: DataFiles
    memory: MemoryTools
    """A memory tool set of its own over the same ``files`` (the same per-file locks)."""
    reminders: Reminders
    conversations: Conversations
    runner: ToolRunner
    servers: Callable[[], Sequence[ServerState]]
    pool: EndpointPool
    models: ModelCommands
    usage: UsageLog
    clock: Callable[[], datetime]
    """The local time (scheduler.timezone): "today" starts at its midnight."""
    masked: Callable[[str], str]
    """Text with every known secret replaced by ``***`` (the log's mask)."""
    config_path: Path | None


class AssistantState:
    """The ``Settings`` of the web edge: each answer is the frame the asking tab gets."""

    def __init__(self, parts: StateParts) -> None:
        self.p = parts

    # -- the whole view ---------------------------------------------------------------------

    async def view(self, thread_id: ThreadId) -> Frame:
        p = self.p
        rows = tool_rows(p.runner, p.servers(), can_ask=True)
        return {
            "type": "settings",
            "config_path": str(p.config_path) if p.config_path else "",
            "files": await self._files(),
            "max_bytes": p.memory.max_bytes,
            "new_version": version_of(""),  # what a new skill is saved against
            **await self._reminders(thread_id),
            "tools": [{"name": r.name, "mode": r.mode, "server": r.server,
                       "state": p.masked(r.state)} for r in rows],
            **self._models(thread_id),
            "usage": await self._usage(),
        }

    async def _files(self) -> list[Frame]:
        names = [MEMORIES, HEARTBEATS,
                 *(f"{SKILLS_DIR}/{s.name}" for s in await asyncio.to_thread(self.p.files.skills))]
        shown = []
        for name in names:
            try:
                text = await self.p.memory.load(name)
            except ToolError as err:  # too large to load, or not a plain file
                shown.append({"name": name, "error": str(err)})
                continue
            shown.append({"name": name, "text": text, "version": version_of(text)})
        return shown

    async def _reminders(self, thread_id: ThreadId) -> Frame:
        store = self.p.reminders.store
        active = await store.active(REMINDERS_SHOWN)
        titles = await self.p.conversations.titles({r.thread_id for r in active})
        tz = self.p.reminders.tz
        listed = [{
            "id": r.id, "text": r.text, "system": r.system, "repeat": repeat_text(r),
            "next_at": r.next_at,
            "next_local": local_text(r.next_at, tz) if r.next_at is not None else "",
            "thread_id": r.thread_id, "here": r.thread_id == thread_id,
            "title": titles.get(r.thread_id, r.thread_id),
        } for r in active]
        return {"reminders": listed, "reminders_total": await store.count_active(),
                "timezone": str(tz)}

    def _models(self, thread_id: ThreadId) -> Frame:
        p = self.p
        endpoints = [{
            "name": ep.name, "url": p.masked(ep.config.shown_url),
            "added_by": ep.added_by or "", "problem": p.masked(ep.problem),
            "healthy": p.pool.is_healthy(ep) and not ep.problem,
            "models": list(ep.models) if ep.models is not None else None,
        } for ep in p.pool.endpoints()]
        return {
            "endpoints": endpoints,
            "aliases": [{"alias": a.alias, "model": a.model} for a in p.pool.aliases()],
            "models": [m.name for m in p.pool.models()],
            "model": self._model_of(thread_id),
        }

    def _model_of(self, thread_id: ThreadId) -> Frame:
        models = self.p.models
        return {"current": models.model_for(thread_id),
                "chosen": models.chosen(thread_id) is not None,
                "default": self.p.pool.default_model}

    async def _usage(self) -> Frame:
        now = self.p.clock()
        starts = [_midnight(now.date() - timedelta(days=back), now.tzinfo)
                  for back in range(DAYS_SHOWN - 1, -1, -1)]
        ends = [*starts[1:], now.timestamp() + 1]
        days = []
        for start, end in zip(starts, ends, strict=True):
            used = await self.p.usage.by_model(start, end)
            days.append({"day": datetime.fromtimestamp(start, now.tzinfo).date().isoformat(),
                         "prompt_tokens": sum(u.prompt_tokens for u in used),
                         "completion_tokens": sum(u.completion_tokens for u in used),
                         "models": [{"model": u.model, "calls": u.calls,
                                     "prompt_tokens": u.prompt_tokens,
                                     "completion_tokens": u.completion_tokens} for u in used]})
        return {"today": days[-1], "days": days}

    # -- changes ----------------------------------------------------------------------------

    async def save(self, name: str, text: str, version: str) -> Frame:
        try:
            new = await self.p.memory.rewrite_if(name, text, version)
        except Conflict as err:
            return _conflict(err)
        except (ToolError, OSError) as err:  # too large, refused by the workspace or disk
            return {"type": "settings_refused", "action": "save", "name": name,
                    "message": f"{name} was not saved: {err}"}
        return {"type": "settings_saved", "name": name, "version": new, "text": text}

    async def delete(self, name: str, version: str) -> Frame:
        try:
            await self.p.memory.remove_if(name, version)
        except Conflict as err:
            return _conflict(err)
        except (ToolError, OSError) as err:
            return {"type": "settings_refused", "action": "delete", "name": name,
                    "message": f"{name} was not deleted: {err}"}
        return {"type": "settings_deleted", "name": name}

    async def cancel_reminder(self, reminder_id: int) -> Frame:
        if not await self.p.reminders.cancel(reminder_id):
            return {"type": "settings_refused", "action": "cancel_reminder", "id": reminder_id,
                    "message": f"Reminder #{reminder_id} is not active (already done or "
                               "cancelled); nothing was changed."}
        return {"type": "settings_reminder_cancelled", "id": reminder_id}

    async def set_model(self, thread_id: ThreadId, model: str) -> Frame:
        try:
            line = await self.p.models.set_model(thread_id, model, "web")
        except InputRejected as err:  # no such model: its message says what to do
            return {"type": "settings_refused", "action": "model", "message": str(err)}
        return {"type": "settings_model", "line": line, **self._model_of(thread_id)}


def _midnight(day: date, tz: tzinfo | None) -> float:
    return datetime(day.year, day.month, day.day, tzinfo=tz).timestamp()


def _conflict(err: Conflict) -> Frame:
    return {"type": "settings_conflict", "name": err.name, "text": err.text,
            "version": version_of(err.text), "message": str(err)}
