"""Prompt assembly: a pure function of the base prompt, memory files, skills, time and history."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ganglion.storage.files import Skill
from ganglion.storage.history import StoredMessage
from ganglion.untrusted import neutralise


@dataclass(frozen=True, slots=True)
class PromptInputs:
    base_prompt: str
    memories: str
    heartbeats: str
    skills: Sequence[Skill]
    now: datetime
    """Aware local time: the model is told the date, time and zone."""
    history: Sequence[StoredMessage]
    tool_names: Sequence[str] = ()
    interface: str = ""
    """Where the conversation happens ("a browser tab", "the Matrix room ...")."""


def system_text(inp: PromptInputs) -> str:
    parts = [inp.base_prompt.strip() or "You are a helpful personal assistant."]
    zone = inp.now.tzname() or "local"
    parts.append(
        f"Current local time: {inp.now:%A %Y-%m-%d %H:%M} ({zone}, UTC{inp.now:%z})."
        + (f" This conversation is in {inp.interface}." if inp.interface else "")
    )
    if inp.tool_names:
        parts.append("Tools you may use now: " + ", ".join(inp.tool_names) + ".")
    else:
        parts.append("You have no tools in this conversation: answer from what you know.")
    parts.append(_section("MEMORIES.txt (long-term facts about the user)", inp.memories))
    parts.append(_section("HEARTBEATS.txt (active goals, working memory)", inp.heartbeats))
    if inp.skills:  # the assistant's tools write these files: untrusted like any file
        index = "\n".join(f"- skills/{neutralise(s.name)}: {neutralise(s.summary)}"
                          for s in inp.skills)
        parts.append(f"## Skills (notes you wrote; read one before relying on it)\n{index}")
    return "\n\n".join(parts)


def _section(title: str, body: str) -> str:
    body = body.strip()
    return f"## {title}\n{body if body else '(empty)'}"


def history_messages(history: Sequence[StoredMessage]) -> list[dict[str, Any]]:
    """Stored rows in the OpenAI chat format (notices are for people, not the model)."""
    out: list[dict[str, Any]] = []
    for m in history:
        if m.role == "summary":
            summary = f"Summary of the earlier conversation:\n{m.content}"
            out.append({"role": "system", "content": summary})
        elif m.role == "assistant":
            msg: dict[str, Any] = {"role": "assistant", "content": m.content or None}
            if m.tool_calls:
                msg["tool_calls"] = m.tool_calls
            out.append(msg)
        elif m.role == "tool":
            out.append({"role": "tool", "tool_call_id": m.tool_call_id or "", "content": m.content})
        elif m.role == "user":
            out.append({"role": "user", "content": m.content})
    return out


def build_messages(inp: PromptInputs) -> list[dict[str, Any]]:
    """The full message list for one model call."""
    return [{"role": "system", "content": system_text(inp)}, *history_messages(inp.history)]
