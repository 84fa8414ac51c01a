"""Prompt assembly: a pure function of the base prompt, memory files, skills, time and history.

The order is for the model server's prompt cache. A local server (llama.cpp, Ollama, vLLM)
reuses the longest prefix the new prompt shares with the previous one and reads the rest
anew: on a small CPU that is 13-35 s for 2,000 tokens against well under a second for a
reused prefix. So what lives longest comes first and is byte-identical from turn to turn:
the base prompt and the tools line (the first system message, which chat templates such as
Qwen's render before the ``tools`` schemas, themselves sorted by name), then the skills index
and the memory files (a second system message: they change now and then), then the history,
and only then what changes every turn: the local time (to the minute) and where the
conversation happens, in a short system message just before the latest user message. A
memory edit re-reads from the memory section on; a new minute re-reads only the last
exchange.
"""

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
    tools_note: str = ""
    """The tool servers that are down now (their tools missing): after the tools line, in
    the head; it changes only when a server comes or goes."""
    interface: str = ""
    """Where the conversation happens ("a browser tab", "the Matrix room ...")."""


def system_text(inp: PromptInputs) -> str:
    """The lasting head: the base prompt and the tools on offer (sorted: a stable prefix)."""
    parts = [inp.base_prompt.strip() or "You are a helpful personal assistant."]
    if inp.tool_names:
        parts.append("Tools you may use now: " + ", ".join(sorted(inp.tool_names)) + ".")
    else:
        parts.append("You have no tools in this conversation: answer from what you know.")
    if inp.tools_note:
        parts.append(inp.tools_note)
    return "\n\n".join(parts)


def files_text(inp: PromptInputs) -> str:
    """What the assistant keeps between conversations: skills, then the memory files (the
    working memory, HEARTBEATS.txt, last: it changes most often)."""
    parts = []
    if inp.skills:  # the assistant's tools write these files: untrusted like any file
        index = "\n".join(f"- skills/{neutralise(s.name)}: {neutralise(s.summary)}"
                          for s in inp.skills)
        parts.append(f"## Skills (notes you wrote; read one before relying on it)\n{index}")
    parts.append(_section("MEMORIES.txt (long-term facts about the user)", inp.memories))
    parts.append(_section("HEARTBEATS.txt (active goals, working memory)", inp.heartbeats))
    return "\n\n".join(parts)


def now_text(inp: PromptInputs) -> str:
    """The volatile part: the local time to the minute, and where the conversation is."""
    zone = inp.now.tzname() or "local"
    return (f"Current local time: {inp.now:%A %Y-%m-%d %H:%M} ({zone}, UTC{inp.now:%z})."
            + (f" This conversation is in {inp.interface}." if inp.interface else ""))


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


def fixed_texts(inp: PromptInputs) -> list[str]:
    """The texts of the messages sent besides the history, each one message: the lasting
    head, the files, the time (none of them depends on the history)."""
    return [system_text(inp), files_text(inp), now_text(inp)]


def build_messages(inp: PromptInputs, fixed: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """The full message list for one model call: lasting head first, the time last but one.
    ``fixed``: ``fixed_texts(inp)`` when the caller has them already (they do not depend on
    the history)."""
    head, files, now = fixed if fixed is not None else fixed_texts(inp)
    history = history_messages(inp.history)
    # Before the latest user message (the one this turn answers, or a review's instruction);
    # after everything when there is none.
    last_user = next((i for i in range(len(history) - 1, -1, -1)
                      if history[i]["role"] == "user"), len(history))
    return [
        {"role": "system", "content": head},
        {"role": "system", "content": files},
        *history[:last_user],
        {"role": "system", "content": now},
        *history[last_user:],
    ]
