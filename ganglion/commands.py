"""Chat commands (``/new`` or ``!new``): parsed before any LLM call, run in the thread's order."""

from __future__ import annotations

import difflib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ganglion.messages import Inbound

_COMMAND = re.compile(r"^[/!]([A-Za-z][A-Za-z0-9_]*)(?:\s+(.*))?$", re.DOTALL)


@dataclass(frozen=True, slots=True)
class CommandCall:
    name: str
    args: str


def parse_command(text: str) -> CommandCall | None:
    """``/name args`` or ``!name args`` (Element swallows ``/``); ``/etc/hosts`` is no command."""
    m = _COMMAND.match(text.strip())
    if m is None:
        return None
    return CommandCall(m.group(1).lower(), (m.group(2) or "").strip())


Handler = Callable[[Inbound, str], Awaitable[str]]


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    usage: str
    summary: str
    handler: Handler
    immediate: bool = False
    """Runs at once, outside the thread's turn order (``/approve`` while a turn waits)."""


class CommandTable:
    """The commands every thread knows; later parts add theirs with ``add``."""

    def __init__(self) -> None:
        self._commands: dict[str, Command] = {}
        self.add("help", "/help", "list every command", self._help)

    def add(
        self, name: str, usage: str, summary: str, handler: Handler, *, immediate: bool = False
    ) -> None:
        if name in self._commands:
            raise ValueError(f"command {name} registered twice")
        self._commands[name] = Command(name, usage, summary, handler, immediate)

    def is_immediate(self, name: str) -> bool:
        command = self._commands.get(name)
        return command is not None and command.immediate

    async def run(self, call: CommandCall, msg: Inbound) -> str:
        command = self._commands.get(call.name)
        if command is None:
            return self._unknown(call.name)
        return await command.handler(msg, call.args)

    def _unknown(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._commands), n=1)
        hint = f" Did you mean `/{close[0]}`?" if close else ""
        return (f"Unknown command `/{name}`.{hint} Send `/help` for the list "
                "(`!` works as well as `/`).")

    async def _help(self, msg: Inbound, args: str) -> str:
        lines = ["Commands (start with `/` or `!`):", ""]
        lines += [f"- `{c.usage}`: {c.summary}" for c in self._commands.values()]
        lines += ["", "Anything else is sent to the assistant."]
        return "\n".join(lines)
