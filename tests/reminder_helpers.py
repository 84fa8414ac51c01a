"""What the reminder tests share: the zone (Asia/Kathmandu), a fast scheduler, a chat tab,
the model setting a reminder, and reading reminders as they arrive, in the inbox and in
data/reminders.json."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fake_llm import FakeLLM, Reply, tool_results
from wsclient import ChatClient

from ganglion.app import App

TZ = "Asia/Kathmandu"  # UTC+05:45 all year: a wrong zone is off by hours, not minutes
KATHMANDU = ZoneInfo(TZ)
FAST: dict[str, Any] = {"scheduler": {"timezone": TZ, "min_repeat_minutes": 0.01}}



async def set_by_model(chat: ChatClient, fake_llm: FakeLLM, **args: Any) -> str:
    """The model calls set_reminder(**args) and answers; returns the tool's result text."""
    fake_llm.script(Reply(tool_calls=[("set_reminder", args)]), Reply(text="Noted."))
    reply = await chat.ask("please remind me")
    assert reply["text"] == "Noted.", reply
    return tool_results(fake_llm.requests[-1])[-1]


def reminders_so_far(events: list[dict[str, Any]]) -> list[str]:
    """The reminder messages among ``events`` (as ``ChatClient.events_so_far`` returns)."""
    return [e["text"] for e in events
            if e.get("type") == "message" and e.get("text", "").startswith("⏰")]


async def next_reminder(chat: ChatClient, timeout: float = 10) -> tuple[float, dict[str, Any]]:
    while True:
        event = await chat.next_event(timeout=timeout)
        if event.get("type") == "message" and event.get("text", "").startswith("⏰"):
            return time.time(), event


async def mirrored(data_dir: Path, expected: list[tuple[Any, ...]]) -> dict[str, Any]:
    """data/reminders.json once it lists (id, repeat, text) == ``expected`` (written in the
    background, just after the change)."""
    doc: dict[str, Any] = {}
    for _ in range(300):
        path = data_dir / "reminders.json"
        if path.exists():
            doc = json.loads(path.read_text())
            if [(r["id"], r["repeat"], r["text"]) for r in doc["reminders"]] == expected:
                return doc
        await asyncio.sleep(0.01)
    raise AssertionError(f"reminders.json never showed {expected}: {doc}")


async def inbox_reminders(app: App) -> list[str]:
    rows = await app.db.fetchall("SELECT client_id FROM inbox WHERE source = 'reminder'")
    return [r["client_id"] for r in rows]
