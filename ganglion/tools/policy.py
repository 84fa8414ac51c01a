"""Tool policy and approvals: which tools the model gets (off / ask / on), and who says yes.

Place in the flow: the worker's tool loop -> ``ToolRunner.run`` -> policy check -> (for
``ask``) the exact call posted in the thread, waiting for ``/approve`` or ``/deny`` ->
``ToolRegistry.call`` -> the result, neutralised and marked as data, back to the model.
Everything a tool does passes here, so one place decides, logs and shows it.

What the model gets: a result fenced as data (``ganglion.untrusted.as_data``); an error
the tool reported (its own message, or what it raised) as an ``error:`` line followed by
that message fenced as data, since it may quote a file or a command's output; and the
daemon's own refusals (policy, approval, a malformed call, arguments a tool found wrong:
``BadArguments``) as plain ``error: ...`` text, which is guidance the model should follow,
not data.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from ganglion.commands import CommandTable, Rank
from ganglion.config_tools import ToolMode as Mode
from ganglion.durations import duration_text
from ganglion.messages import Inbound, ThreadId
from ganglion.tool_names import MCP_SEPARATOR, mcp_server_of
from ganglion.tools.registry import ToolContext, ToolRegistry
from ganglion.untrusted import as_data, fenced, mask_secrets, neutralise, reveal, tool_error

log = logging.getLogger(__name__)

DEFAULT_MODES: Mapping[str, Mode] = {"shell": "ask", "web_fetch": "ask", "web_search": "ask"}
"""Modes of built-in tools that ``tools.policy`` leaves out; any other built-in is ``on``."""
MCP_DEFAULT_MODE: Mode = "ask"
"""An MCP server's tool that ``tools.policy`` leaves out (by its name or ``<server>__*``):
code and data from elsewhere, so a person says yes to each call unless told otherwise."""

MAX_SHOWN_CALL = 20_000
"""A call longer than this cannot be shown in full, so it is never put up for approval."""
DISPLAY_OUTPUT = 3_000
"""Characters of a tool's result shown in the transcript (the model gets all of it)."""

Post = Callable[[ThreadId, str], Awaitable[None]]
"""Store a notice in a thread and deliver it now (``Router.broadcast``)."""


class ToolPolicy:
    """The configured mode of each tool."""

    def __init__(self, modes: Mapping[str, Mode]) -> None:
        self._modes = {**DEFAULT_MODES, **modes}

    def mode(self, name: str) -> Mode:
        mode = self._modes.get(name)
        if mode is not None:
            return mode
        server = mcp_server_of(name)
        if server is None:
            return "on"
        return self._modes.get(f"{server}{MCP_SEPARATOR}*", MCP_DEFAULT_MODE)

    def offered(self, names: Iterable[str], *, can_ask: bool) -> list[str]:
        """The tools a turn may use: ``on`` ones, and ``ask`` ones when someone can approve."""
        return [n for n in names if self.mode(n) == "on" or (can_ask and self.mode(n) == "ask")]


# -- approvals -------------------------------------------------------------------------------


class Decision(StrEnum):
    APPROVED = "approved"
    DENIED = "denied"
    TIMED_OUT = "timed out"


@dataclass(slots=True)
class _Pending:
    id: str
    tool: str
    future: asyncio.Future[tuple[Decision, str]]


Waiting = Callable[[ThreadId, bool], Awaitable[None]]
"""Told when a thread starts (True) and stops (False) waiting for an answer: the page says
"waiting for your approval" instead of "thinking"."""

Approver = Callable[[Inbound], bool]
"""Who may approve: the web UI (it holds the token), matrix.owner and matrix.trusted_users;
the composition root answers from ``Access.rank_of``, the one place that ranks senders."""


class Approvals:
    """Calls waiting for a person's yes or no, one at most per thread (its turn waits)."""

    def __init__(self, is_approver: Approver, timeout_seconds: float, post: Post,
                 waiting: Waiting | None = None) -> None:
        self.is_approver = is_approver
        self.timeout_seconds = timeout_seconds
        self.post = post
        self.waiting_changed = waiting
        self._pending: dict[ThreadId, _Pending] = {}

    def register(self, commands: CommandTable) -> None:
        # Immediate: the turn that waits for the answer holds the thread's lane.
        commands.add("approve", "/approve [id]", "let the assistant make the call it asked "
                     "about", self._approve, immediate=True, rank=Rank.TRUSTED)
        commands.add("deny", "/deny [id]", "refuse the call the assistant asked about",
                     self._deny, immediate=True, rank=Rank.TRUSTED)

    def waiting(self, thread_id: ThreadId) -> bool:
        return thread_id in self._pending

    async def ask(self, thread_id: ThreadId, tool: str, shown: str) -> tuple[Decision, str]:
        """Post ``shown`` (the exact call) in the thread; wait for an answer or the time-out.

        Returns the decision and who made it.
        """
        if thread_id in self._pending:  # cannot happen with serial turns; deny to be safe
            return Decision.DENIED, "the daemon (another call is waiting already)"
        pending = _Pending(secrets.token_hex(2), tool,
                           asyncio.get_running_loop().create_future())
        self._pending[thread_id] = pending
        try:
            minutes = duration_text(self.timeout_seconds)
            await self.post(thread_id, (
                f"**Approval needed** (`{pending.id}`): the assistant wants to use "
                f"`{tool}`:\n\n{shown}\n\nReply `/approve` or `/deny`. No answer within "
                f"{minutes} denies it."))
            if self.waiting_changed is not None:
                await self.waiting_changed(thread_id, True)
            try:
                async with asyncio.timeout(self.timeout_seconds):
                    return await pending.future
            except TimeoutError:
                await self.post(thread_id, f"No answer within {minutes}: `{tool}` was not "
                                           f"used (request `{pending.id}`).")
                return Decision.TIMED_OUT, "nobody"
        finally:
            self._pending.pop(thread_id, None)
            if self.waiting_changed is not None:
                await self.waiting_changed(thread_id, False)

    async def _approve(self, msg: Inbound, args: str) -> str:
        return self._answer(msg, args, Decision.APPROVED)

    async def _deny(self, msg: Inbound, args: str) -> str:
        return self._answer(msg, args, Decision.DENIED)

    def _answer(self, msg: Inbound, args: str, decision: Decision) -> str:
        pending = self._pending.get(msg.thread_id)
        if pending is None or pending.future.done():
            return "Nothing is waiting for approval in this conversation."
        wanted = args.strip().strip("`")
        if wanted and wanted != pending.id:
            return (f"The request waiting here is `{pending.id}`, not `{wanted}`; "
                    "nothing was changed.")
        if msg.system or not self.is_approver(msg):  # CommandTable checks the rank first
            log.warning("[%s] %s refused: %s may not approve tool calls", msg.thread_id,
                        decision.value, msg.sender)
            return (f"{msg.sender} may not approve or deny tool calls: only the web UI and "
                    "the Matrix users in matrix.trusted_users (and matrix.owner) can. "
                    f"Request `{pending.id}` is still waiting.")
        pending.future.set_result((decision, msg.sender))
        if decision is Decision.APPROVED:
            return f"Approved: `{pending.tool}` runs now (request `{pending.id}`)."
        return f"Denied: `{pending.tool}` will not run (request `{pending.id}`)."


# -- running a call --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ToolRun:
    """One call's result: ``text`` for the model, ``display`` for the transcript.

    ``display`` reads: the call in one line (``shell: ls -l``), a blank line, the outcome in
    one line (``ok in 12 ms, 340 characters``), then what the short line leaves out of the
    arguments and the result. Interfaces may show only its first paragraphs (Matrix does).
    """

    text: str
    display: str
    ok: bool


Describe = Callable[[Mapping[str, Any]], str]
"""How a tool's call is shown for approval (the shell shows its command line)."""


class ToolRunner:
    """Policy, approval, the call itself, neutralising and logging, for every tool call."""

    def __init__(self, registry: ToolRegistry, policy: ToolPolicy, approvals: Approvals) -> None:
        self.registry = registry
        self.policy = policy
        self.approvals = approvals
        self._describe: dict[str, Describe] = {}

    def describe_with(self, tool: str, describe: Describe) -> None:
        self._describe[tool] = describe

    def offered(self, *, can_ask: bool) -> list[str]:
        return self.policy.offered(self.registry.names(), can_ask=can_ask)

    async def run(
        self, name: str, arguments: str, ctx: ToolContext, offered: Collection[str]
    ) -> ToolRun:
        tid = ctx.thread_id
        started = time.monotonic()
        args: Any = _parse(arguments)
        # Secrets masked, hidden characters (bidi overrides, zero-width) written out: a log
        # line reads as what ran.
        shown_args = reveal(mask_secrets(_short(arguments if args is None else _compact(args),
                                                500)))[0]
        refusal = self._refusal(name, offered)
        if refusal is not None:
            waited = time.monotonic() - started
            log.info("[%s] tool %s(%s) refused in %.0f ms: %s", tid, name, shown_args,
                     waited * 1000, refusal)
            return self._refused(name, args, refusal, waited)
        if isinstance(args, dict):
            arguments = json.dumps(args)  # exactly what was shown for approval runs
            # A malformed call is never put up for approval: it would fail once approved.
            # It goes on to ``call``, which returns the same error to the model.
            asks = self.policy.mode(name) == "ask"
            if asks and self.registry.valid(name, arguments, ctx):
                decision = await self._approval(tid, name, args)
                if decision is not None:
                    waited = time.monotonic() - started
                    log.info("[%s] tool %s(%s) not run after %.0f ms: %s", tid, name,
                             shown_args, waited * 1000, decision)
                    return self._refused(name, args, decision, waited)
        outcome = await self.registry.call(name, arguments, ctx)
        log.info("[%s] tool %s(%s) %s in %.0f ms, %d characters", tid, name, shown_args,
                 "ok" if outcome.ok else "failed", outcome.seconds * 1000, len(outcome.text))
        display = self._display(name, args, outcome.text, ok=outcome.ok,
                                seconds=outcome.seconds)
        if outcome.ok:
            return ToolRun(as_data(name, outcome.text), display, ok=True)
        if outcome.from_tool:
            return ToolRun(tool_error(name, outcome.text), display, ok=False)
        return ToolRun(neutralise(outcome.text), display, ok=False)

    def _refusal(self, name: str, offered: Collection[str]) -> str | None:
        if name in offered:
            return None
        usable = ", ".join(offered) or "none"
        if name not in self.registry.names():
            return f"no tool named {name!r}; tools you may use: {usable}"
        if self.policy.mode(name) == "off":
            return f"the tool {name} is switched off here (tools.policy); you may use: {usable}"
        return (f"{name} needs a person's approval, which this background task cannot ask "
                f"for; you may use: {usable}")

    async def _approval(self, tid: ThreadId, name: str, args: dict[str, Any]) -> str | None:
        """None when approved; else why the call was not made (for the model)."""
        describe = self._describe.get(name)
        shown, hidden = reveal(describe(args) if describe else fenced(
            json.dumps(args, indent=2, ensure_ascii=False), "json"))
        if hidden:
            # The call itself stays as the model sent it: only what the approver reads changes.
            shown = (f"**Warning: this call contains {hidden} invisible character"
                     f"{'s' if hidden > 1 else ''}** (control, format or unusual space "
                     "characters), shown below as `\\uXXXX`. They run as they are, not as "
                     f"written here: deny unless you know why they are there.\n\n{shown}")
        if len(shown) > MAX_SHOWN_CALL:
            return (f"this call is too long ({len(shown):,} characters) to show the user for "
                    f"approval; the limit is {MAX_SHOWN_CALL:,}: make it shorter")
        asked = time.monotonic()
        decision, by = await self.approvals.ask(tid, name, shown)
        log.info("[%s] tool %s %s by %s after %.1f s", tid, name, decision.value, by,
                 time.monotonic() - asked)
        if decision is Decision.APPROVED:
            return None
        if decision is Decision.DENIED:
            return ("the user denied this call; it was not run. Do not retry it unless they "
                    "ask; ask them what they want instead")
        return "nobody approved this call in time; it was not run"

    def _refused(self, name: str, args: Any, why: str, waited: float) -> ToolRun:
        """The daemon's own refusal: plain guidance for the model (not fenced as data)."""
        text = neutralise(f"error: {why}")
        return ToolRun(text, self._display(name, args, text, ok=False, seconds=waited),
                       ok=False)

    def _display(self, name: str, args: Any, result: str, *, ok: bool, seconds: float) -> str:
        """First line: what was called (the web shows it on the collapsed entry); then the
        outcome (with the first line, Matrix's notice); then the full arguments if the first
        line leaves some out; then the result."""
        result = neutralise(result)
        size = len(result)
        if len(result) > DISPLAY_OUTPUT:
            more = len(result) - DISPLAY_OUTPUT
            result = result[:DISPLAY_OUTPUT] + f"\n… ({more:,} more characters went to the model)"
        summary, complete = _summary(args)
        shown = f"{_one_line(name, 64)}: {summary}\n\n{_outcome(ok, seconds, size)}\n\n"
        if not complete:
            shown += f"arguments: {_short(_compact(args), 2000)}\n\n"
        return neutralise(shown) + result


def _outcome(ok: bool, seconds: float, size: int) -> str:
    took = f"{seconds * 1000:.0f} ms" if seconds < 1 else f"{seconds:.1f} s"
    return f"ok in {took}, {size:,} characters" if ok else f"error after {took}"


def _one_line(text: str, limit: int) -> str:
    return _short(" ".join(text.split()), limit)


def _parse(arguments: str) -> Any:
    try:
        return json.loads(arguments) if arguments.strip() else {}
    except json.JSONDecodeError:
        return None


def _compact(args: Any) -> str:
    return json.dumps(args, ensure_ascii=False)


def _short(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "…"


def _summary(args: Any) -> tuple[str, bool]:
    """The call in one short line (the command or path alone, else ``key=value`` pairs), and
    whether that line shows every argument in full."""
    if not isinstance(args, dict):
        return "(arguments are not a JSON object)", True
    for key in ("command", "path", "file"):
        value = args.get(key)
        if isinstance(value, str):
            line = " ".join(value.split())
            return _short(line, 100), len(args) == 1 and line == value and len(line) <= 100
    pairs = ", ".join(f"{k}={v if isinstance(v, str) else _compact(v)}" for k, v in args.items())
    line = " ".join(pairs.split())
    return _short(line, 100), line == pairs and len(line) <= 100
