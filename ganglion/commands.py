"""Chat commands (``/new`` or ``!new``): parsed before any LLM call, run in the thread's order."""

from __future__ import annotations

import difflib
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import IntEnum

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


class Rank(IntEnum):
    """Who may run a command; a higher rank may run everything a lower one may."""

    USER = 1
    """Anyone the assistant answers (matrix.allowed_users)."""
    TRUSTED = 2
    """matrix.trusted_users."""
    OWNER = 3
    """matrix.owner, and the web UI (it holds the token)."""


RankOf = Callable[[Inbound], Rank]


def _everyone_is_owner(msg: Inbound) -> Rank:
    return Rank.OWNER


@dataclass(frozen=True, slots=True)
class Command:
    name: str
    usage: str
    summary: str
    handler: Handler
    immediate: bool = False
    """Runs at once, outside the thread's turn order (``/approve`` while a turn waits)."""
    rank: Rank = Rank.USER
    """The lowest rank that may run it."""
    prepare: Handler | None = None
    """Runs first for every sender, allowed or not, e.g. to wipe a secret from the message;
    what it returns is added to the reply."""


class CommandTable:
    """The commands every thread knows; later parts add theirs with ``add``."""

    def __init__(self, rank_of: RankOf = _everyone_is_owner) -> None:
        self._commands: dict[str, Command] = {}
        self.rank_of = rank_of
        self.add("help", "/help", "list the commands you may run", self._help)

    def add(
        self,
        name: str,
        usage: str,
        summary: str,
        handler: Handler,
        *,
        immediate: bool = False,
        rank: Rank = Rank.USER,
        prepare: Handler | None = None,
    ) -> None:
        if name in self._commands:
            raise ValueError(f"command {name} registered twice")
        self._commands[name] = Command(name, usage, summary, handler, immediate, rank, prepare)

    def is_immediate(self, name: str) -> bool:
        command = self._commands.get(name)
        return command is not None and command.immediate

    async def run(self, call: CommandCall, msg: Inbound) -> str:
        command = self._commands.get(call.name)
        if command is None:
            return self._unknown(call.name)
        note = await command.prepare(msg, call.args) if command.prepare is not None else ""
        rank = self.rank_of(msg)
        if rank < command.rank:
            who = "the owner" if command.rank is Rank.OWNER else "trusted users and the owner"
            return (f"`/{command.name}` is for {who} only; you are {_a(rank)}. "
                    "Send `/help` for the commands you may run." + note)
        return await command.handler(msg, call.args) + note

    def _unknown(self, name: str) -> str:
        close = difflib.get_close_matches(name, list(self._commands), n=1)
        hint = f" Did you mean `/{close[0]}`?" if close else ""
        return (f"Unknown command `/{name}`.{hint} Send `/help` for the list "
                "(`!` works as well as `/`).")

    async def _help(self, msg: Inbound, args: str) -> str:
        rank = self.rank_of(msg)
        lines = [f"Commands you may run as {_a(rank)} (start with `/` or `!`):"]
        headings = {Rank.USER: "Everyone", Rank.TRUSTED: "Trusted users and the owner",
                    Rank.OWNER: "The owner"}
        for level in Rank:
            if level > rank:
                continue
            allowed = [c for c in self._commands.values() if c.rank is level]
            if allowed:
                lines += ["", f"{headings[level]}:"]
                lines += [f"- `{c.usage}`: {c.summary}" for c in allowed]
        hidden = sum(c.rank > rank for c in self._commands.values())
        if hidden:
            who = "the owner" if rank is Rank.TRUSTED else "trusted users and the owner"
            lines += ["", f"({hidden} more for {who}.)"]
        lines += ["", "Anything else is sent to the assistant."]
        return "\n".join(lines)


def _a(rank: Rank) -> str:
    return {Rank.USER: "a user", Rank.TRUSTED: "a trusted user", Rank.OWNER: "the owner"}[rank]
