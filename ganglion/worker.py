"""The worker: one Inbound, one turn: a command, or prompt -> model -> tools -> reply."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, Protocol

from ganglion.commands import CommandTable, parse_command
from ganglion.errors import LLMBadResponse, LLMUnavailable
from ganglion.llm.client import LLMClient
from ganglion.llm.compaction import Compactor
from ganglion.llm.prompt import PromptInputs, build_messages, system_text
from ganglion.llm.results import ChatResult
from ganglion.llm.untrusted import neutralise
from ganglion.messages import (
    Inbound,
    Outbound,
    OutKind,
    Role,
    Source,
    ThreadId,
    is_matrix_thread,
)
from ganglion.router import Router
from ganglion.storage.files import BASE_PROMPT, HEARTBEATS, MEMORIES, DataFiles
from ganglion.storage.history import History, NewMessage, StoredMessage
from ganglion.tokens import message_tokens
from ganglion.tools.policy import ToolRunner
from ganglion.tools.registry import ToolContext, ToolRegistry

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
STORE_RETRY_FIRST = 0.5
STORE_RETRY_MAX = 30.0
"""Seconds between attempts to store a finished turn while the disk refuses writes."""
CRASHED = ("Something went wrong on my side ({}). The details are in logs/ganglion.log; "
           "please try again.")
"""The notice of a turn that raised: a bug (tests fail on it)."""
COMPACTION_PAUSE_SECONDS = 600
"""After a failed compaction, how long a thread whose history still fits is not compacted."""
CUT_OFF = ("error: this call was cut off before its result came back (a stop or a restart). "
           "It may have taken effect: check (for example with list_reminders or read_file) "
           "before you repeat it.")
"""The result a tool call gets when the turn that made it ended while it ran."""
EMPTY_ANSWER = ("The language model (endpoint '{}') sent an empty answer. Please try again, "
                "perhaps in other words; if it keeps happening, its server's log should say why.")


def local_now() -> datetime:
    return datetime.now().astimezone()


class Reviews(Protocol):
    """How a heartbeat review turn differs (ganglion/triggers/heartbeat.py implements it)."""

    async def context(
        self, msg: Inbound, history: Sequence[StoredMessage]
    ) -> list[StoredMessage] | None:
        """A light context ending with the review's instruction (not stored); None skips it."""
        ...

    async def finished(
        self, msg: Inbound, new: Sequence[NewMessage], tokens: int
    ) -> list[NewMessage]:
        """What of the review's output is kept and delivered (nothing, on the sentinel)."""
        ...


class Worker:
    """Runs turns for the bus (it implements the bus's TurnHandler)."""

    def __init__(
        self,
        *,
        llm: LLMClient,
        history: History,
        router: Router,
        files: DataFiles,
        tools: ToolRegistry,
        runner: ToolRunner,
        commands: CommandTable,
        compactor: Compactor,
        model: str,
        max_tool_steps: int,
        clock: Clock = local_now,
        reviews: Reviews | None = None,
        admit: Callable[[Inbound], Awaitable[str | None]] | None = None,
        model_for: Callable[[ThreadId], str] | None = None,
    ) -> None:
        self.llm = llm
        self.history = history
        self.router = router
        self.files = files
        self.tools = tools
        self.runner = runner
        """Every tool call goes through it: policy, approval, logging, untrusted output."""
        self.commands = commands
        self.compactor = compactor
        self.model = model
        self.max_tool_steps = max_tool_steps
        self.clock = clock
        self.reviews = reviews
        self.admit = admit
        """Roles and limits (ganglion/access.py): None lets the turn run, "" skips it
        silently, any other text refuses it with that reply."""
        self.model_for = model_for or (lambda _tid: self.model)
        """The thread's model (``/model``), else ``model``."""
        self._partial: dict[ThreadId, list[str]] = {}
        self._quiet: set[ThreadId] = set()
        """Threads whose running turn nobody typed (a reminder, a review): no progress
        events. Emptied at the end of each turn, so it holds only running turns."""
        self._compaction_paused: dict[ThreadId, float] = {}
        """Until when (monotonic) compaction is not tried again, per thread, after a failure."""
        self._spent: dict[ThreadId, int] = {}
        """Tokens of the running turn, per thread."""
        commands.add("new", "/new", "start a fresh conversation in this thread", self._cmd_new)
        commands.add("compact", "/compact", "summarise the conversation so far now",
                     self._cmd_compact)

    # -- the bus's TurnHandler -------------------------------------------------------------

    async def run_turn(self, msg: Inbound) -> None:
        tid = msg.thread_id
        started = time.monotonic()
        control = self.is_immediate(msg)  # runs beside the thread's turn: leave its state be
        if not control:
            self._spent[tid] = 0
            if msg.source in (Source.REMINDER, Source.HEARTBEAT):
                self._quiet.add(tid)
            await self._state(tid, "thinking")
        failed = True  # unless the turn returns
        try:
            new = await self._turn(msg)
            failed = False
        except (LLMUnavailable, LLMBadResponse) as err:
            log.warning("[%s] turn failed: %s", tid, err)
            new = [*await self._kept_steps(msg, or_none=True), self._notice(msg, str(err))]
        except asyncio.CancelledError:
            raise
        except sqlite3.Error as err:  # the disk refused a write: say so, not "crashed"
            log.error("[%s] turn failed: the database refused a write: %s", tid, err)
            new = [*await self._kept_steps(msg, or_none=True), self._notice(
                msg, f"I could not write to my database ({err}). The data folder refuses "
                     "writes (full or read-only?); once that is fixed, please send your "
                     "message again.")]
        except Exception as err:
            log.exception("[%s] turn crashed", tid)
            new = [*await self._kept_steps(msg, or_none=True), self._notice(msg, CRASHED.format(
                type(err).__name__))]
        tokens = 0
        if not control:
            self._partial.pop(tid, None)
            tokens = self._spent.pop(tid, 0)
            if msg.source is Source.HEARTBEAT and self.reviews is not None:
                new = await self.reviews.finished(msg, new, tokens)
        try:
            await self._finish(msg, new, idle=not control, failed=failed)
        finally:
            if not control:  # per turn: a system thread never has a typed turn to clear it
                self._quiet.discard(tid)
        log.info("[%s] turn done in %.1f ms, %d tokens", tid,
                 (time.monotonic() - started) * 1000, tokens)

    def is_immediate(self, msg: Inbound) -> bool:
        call = parse_command(msg.text)
        return call is not None and self.commands.is_immediate(call.name)

    async def turn_stopped(self, msg: Inbound) -> None:
        partial = "".join(self._partial.pop(msg.thread_id, []))
        self._spent.pop(msg.thread_id, None)
        self._quiet.discard(msg.thread_id)
        new = await self._kept_steps(msg, or_none=True)
        if partial.strip():
            new.append(NewMessage("assistant", partial + " …", deliver=not msg.system))
        new.append(self._notice(msg, "Stopped."))
        await self._finish(msg, new)

    # -- one turn --------------------------------------------------------------------------

    async def _turn(self, msg: Inbound) -> list[NewMessage]:
        refusal = await self.admit(msg) if self.admit is not None else None
        if refusal is not None:
            return [self._notice(msg, refusal)] if refusal else []
        call = parse_command(msg.text)
        if call is not None:
            reply = await self.commands.run(call, msg)
            return [self._notice(msg, reply)]
        tid = msg.thread_id
        if msg.source is Source.REMINDER and not msg.system:
            # A reminder the user asked for is delivered word for word: no model decides
            # whether it is worth sending. Kept in history, so the model knows it was sent.
            return [NewMessage("assistant", msg.text, deliver=True)]
        reviews = self.reviews if msg.source is Source.HEARTBEAT else None
        if reviews is not None:  # a light context; the review's instruction is not stored
            light = await reviews.context(msg, await self.history.context(tid))
            if light is None:
                return []
            context = light
        else:
            await self.history.begin_turn(msg, msg.text)
            context = await self.history.context(tid)
        # A run of this turn that was cut off (crash, restart) resumes after the tool calls
        # it made: they are not made again.
        new = await self._kept_steps(msg)
        steps_done = sum(1 for m in new if m.tool_calls)
        if new:
            log.info("[%s] resuming message #%d after %d tool step(s) of an earlier run", tid,
                     msg.id, steps_done)
        inputs = self._inputs(msg, context)
        overhead = message_tokens(system_text(inputs))
        if reviews is None and self.compactor.needed(context, overhead) and (
                await self._compact(msg, context, overhead)):
            context = await self.history.context(tid)
            inputs = self._inputs(msg, context)
        messages = build_messages(inputs) + [_model_message(m) for m in new]
        offered = self.runner.offered(can_ask=_person_present(msg))
        schemas = self.tools.schemas(set(offered)) or None
        ctx = ToolContext(tid, msg.sender)
        for _step in range(steps_done, self.max_tool_steps):
            result = await self._chat(tid, messages, schemas)
            if not result.tool_calls:
                if not result.content.strip() and reviews is None:
                    # Well-formed but saying nothing: no empty bubble (a review's silence is
                    # its way of saying "nothing to report", so it keeps its empty answer).
                    log.warning("[%s] %s sent an empty answer", tid, result.endpoint)
                    new.append(self._notice(msg, EMPTY_ANSWER.format(result.endpoint)))
                    return new
                new.append(NewMessage("assistant", result.content, deliver=not msg.system,
                                      tokens=result.usage.completion_tokens))
                return new
            calls = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}}
                for c in result.tool_calls
            ]
            await self._step(msg, new, NewMessage("assistant", result.content,
                                                  tool_calls=calls, visible=False))
            messages.append(_model_message(new[-1]))
            for c in result.tool_calls:
                await self._state(tid, "tool")
                run = await self.runner.run(c.name, c.arguments, ctx, offered)
                if not msg.system and tid not in self._quiet:  # shown as it happens
                    await self.router.broadcast(run.display, tid, role="tool")
                await self._step(msg, new, NewMessage("tool", run.text, tool_call_id=c.id,
                                                      name=c.name, visible=False))
                messages.append(_model_message(new[-1]))
        new.append(self._notice(
            msg, f"I stopped after {self.max_tool_steps} tool steps without a final answer "
                 "(llm.max_tool_steps). Ask me to continue if you want more."))
        return new

    async def _compact(self, msg: Inbound, context: list[StoredMessage],
                       overhead: int) -> bool:
        """Summarise the thread's older part; True when the context changed (the user is
        told). A failure while the whole history still fits answers with it, and waits
        COMPACTION_PAUSE_SECONDS before the next try (each costs a call and a memory flush);
        once it no longer fits, the turn fails saying what to do."""
        tid = msg.thread_id
        fits = self.compactor.fits(context, overhead)
        if fits and time.monotonic() < self._compaction_paused.get(tid, 0.0):
            return False
        try:
            notice = await self.compactor.compact(tid, context)
        except (LLMUnavailable, LLMBadResponse) as err:
            if not fits:
                raise LLMUnavailable(
                    f"This conversation is now too long for the model, and summarising its "
                    f"older part failed: {err} Start afresh with /new, or check "
                    "llm.compaction_model.") from err
            log.warning("[%s] compaction failed, answering with the full history; next try "
                        "in %d s: %s", tid, COMPACTION_PAUSE_SECONDS, err)
            self._compaction_paused[tid] = time.monotonic() + COMPACTION_PAUSE_SECONDS
            if len(self._compaction_paused) > 1000:
                del self._compaction_paused[next(iter(self._compaction_paused))]
            return False
        self._compaction_paused.pop(tid, None)
        if notice is None:
            return False
        await self._notify_now(msg, notice)
        return True

    async def _kept_steps(self, msg: Inbound, *, or_none: bool = False) -> list[NewMessage]:
        """The tool exchange an earlier run of this turn (or this run, ending early) got
        through, a call cut off given its ``CUT_OFF`` result. ``or_none``: nothing when it
        cannot be read (a turn ending on a database error still ends)."""
        if not msg.id:
            return []
        try:
            return _with_cut_off_results(await self.history.steps(msg.id))
        except sqlite3.Error as err:
            if not or_none:
                raise
            log.warning("[%s] could not read the turn's tool steps: %s", msg.thread_id, err)
            return []

    async def _step(self, msg: Inbound, new: list[NewMessage], step: NewMessage) -> None:
        """Add a message of the tool exchange to the turn, and keep it at once (a re-run of
        this turn resumes after it)."""
        new.append(step)
        if msg.id:
            await self.history.add_step(msg.id, len(new) - 1, step)

    def _inputs(self, msg: Inbound, context: list[StoredMessage]) -> PromptInputs:
        return PromptInputs(
            base_prompt=self.files.read(BASE_PROMPT),
            memories=neutralise(self.files.read(MEMORIES)),  # tools write them: untrusted
            heartbeats=neutralise(self.files.read(HEARTBEATS)),
            skills=self.files.skills(),
            now=self.clock(),
            history=context,
            tool_names=self.runner.offered(can_ask=_person_present(msg)),
            interface=_interface_of(msg),
        )

    async def _chat(
        self, tid: ThreadId, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> ChatResult:
        partial = self._partial.setdefault(tid, [])
        partial.clear()
        streaming = False

        async def on_delta(text: str) -> None:
            nonlocal streaming
            if tid in self._quiet:
                return
            if not streaming:
                streaming = True
                await self._state(tid, "streaming")
            partial.append(text)
            await self.router.publish(Outbound(tid, OutKind.DELTA, text))

        async def on_reset() -> None:
            partial.clear()
            if tid not in self._quiet:
                await self.router.publish(Outbound(tid, OutKind.RESET))

        result = await self.llm.chat(messages, model=self.model_for(tid), tools=tools,
                                     on_delta=on_delta, on_reset=on_reset, thread_id=tid)
        log.debug("[%s] %s answered: %d+%d tokens", tid, result.endpoint,
                  result.usage.prompt_tokens, result.usage.completion_tokens)
        self._spent[tid] = self._spent.get(tid, 0) + result.usage.total
        return result

    # -- commands --------------------------------------------------------------------------

    async def _cmd_new(self, msg: Inbound, args: str) -> str:
        dropped = await self.history.forget_context(msg.thread_id)
        return ("Started a fresh conversation." if dropped else
                "This conversation was already empty.") + " Memory files are kept."

    async def _cmd_compact(self, msg: Inbound, args: str) -> str:
        context = await self.history.context(msg.thread_id)
        notice = await self.compactor.compact(msg.thread_id, context, force=True)
        return notice or "Nothing to compact yet."

    # -- output ----------------------------------------------------------------------------

    def _notice(self, msg: Inbound, text: str) -> NewMessage:
        return NewMessage("notice", text, in_context=False, deliver=not msg.system)

    async def _notify_now(self, msg: Inbound, text: str) -> None:
        """A notice that must not wait for the end of the turn (compaction happened)."""
        if not msg.system:
            await self.router.broadcast(text, msg.thread_id)

    async def _finish(
        self, msg: Inbound, new: list[NewMessage], idle: bool = True, failed: bool = False
    ) -> None:
        await self._store(msg, new)
        try:
            await self.router.deliver(msg.thread_id)
        except sqlite3.Error as err:  # stored, so it is sent with the thread's next delivery
            log.warning("[%s] could not mark a delivery: %s", msg.thread_id, err)
        if idle:
            if failed:  # after its notice: the web page shows an error state until the next turn
                await self._state(msg.thread_id, "error")
            await self._state(msg.thread_id, "idle")

    async def _store(self, msg: Inbound, new: list[NewMessage]) -> None:
        """Store the turn's outcome, waiting for a disk that refuses writes to accept them
        again (the thread's later messages wait behind it; a stop leaves it unanswered, so
        the next start runs it again). The user is told once, without storing anything."""
        delay = STORE_RETRY_FIRST
        told = False
        while True:
            try:
                await self.history.finish_turn(msg.thread_id, msg.id, new)
                return
            except sqlite3.Error as err:
                log.error("[%s] could not store the turn's answer (%s); retrying in %.1f s",
                          msg.thread_id, err, delay)
                if not told and not msg.system:
                    told = True
                    await self.router.publish(Outbound(
                        msg.thread_id, OutKind.MESSAGE, role=Role.SYSTEM,
                        text=f"I could not store my answer ({err}): the data folder refuses "
                             "writes (full or read-only?). I will keep trying and send the "
                             "answer once it can be stored."))
            await asyncio.sleep(delay)
            delay = min(delay * 2, STORE_RETRY_MAX)

    async def _state(self, tid: ThreadId, state: str) -> None:
        if tid not in self._quiet:
            await self.router.publish(Outbound(tid, OutKind.STATE, state))


def _with_cut_off_results(steps: list[NewMessage]) -> list[NewMessage]:
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


def _model_message(m: NewMessage) -> dict[str, Any]:
    """A message of the tool exchange as the model's API takes it."""
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
    return {"role": "assistant", "content": m.content or None, "tool_calls": m.tool_calls}


def _person_present(msg: Inbound) -> bool:
    """A person wrote this turn's message, so someone can answer an approval request (a
    review or a reminder has nobody waiting: its ``ask`` tools are not offered)."""
    return not msg.system and msg.source in (Source.WEB, Source.MATRIX)


def _interface_of(msg: Inbound) -> str:
    if msg.system:
        return "an autonomous background task (nothing you write is shown to anyone)"
    if is_matrix_thread(msg.thread_id):
        return f"the Matrix room {msg.thread_id}"
    return "a browser tab of the web UI"


