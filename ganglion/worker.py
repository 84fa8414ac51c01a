"""The worker: one Inbound, one turn: a command, or prompt -> model -> tools -> reply.

Place in the flow: bus -> ``Worker.run_turn`` -> (``turn/``) the tool loop, journaling each
step -> the turn's outcome stored in one transaction -> router. Nothing here imports an
interface: replies leave through the router.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime
from typing import Protocol

from ganglion.commands import CommandTable, parse_command
from ganglion.errors import LLMBadResponse, LLMUnavailable
from ganglion.llm.client import LLMClient
from ganglion.llm.prompt import PromptInputs, build_messages, fixed_texts
from ganglion.messages import Inbound, Source, ThreadId, is_matrix_thread, matrix_room_of
from ganglion.router import Router
from ganglion.storage.backend import why_refused
from ganglion.storage.files import BASE_PROMPT, HEARTBEATS, MEMORIES, DataFiles
from ganglion.storage.history import NEW_CONVERSATION, History, NewMessage, StoredMessage
from ganglion.storage.redo import REDO, regenerates
from ganglion.tools.policy import ToolRunner
from ganglion.tools.registry import ToolRegistry
from ganglion.turn.attachments import Attachments
from ganglion.turn.budget import Calibration, fixed_tokens
from ganglion.turn.compaction import Compactor, context_size
from ganglion.turn.journal import StepJournal, tool_steps
from ganglion.turn.progress import Progress
from ganglion.turn.store import TurnStore, notice
from ganglion.turn.title import Titler
from ganglion.turn.tool_loop import ToolLoop
from ganglion.turn.vision import Looks, Vision
from ganglion.untrusted import neutralise

log = logging.getLogger(__name__)

Clock = Callable[[], datetime]
CRASHED = ("Something went wrong on my side ({}). The details are in logs/ganglion.log; "
           "please try again.")
"""The notice of a turn that raised: a bug (tests fail on it)."""
COMPACTION_PAUSE_SECONDS = 600
"""After a failed compaction, how long a thread whose history still fits is not compacted."""


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
        context_tokens_for: Callable[[str], int] | None = None,
        tools_note: Callable[[], str] | None = None,
        sees_details: Callable[[Inbound], bool] | None = None,
        titles: Titler | None = None,
        on_turn_done: Callable[[float], None] | None = None,
        vision: Vision | None = None,
        attachments: Attachments | None = None,
    ) -> None:
        self.history = history
        self.on_turn_done = on_turn_done
        """Told each finished turn's seconds (the /metrics histogram)."""
        self.router = router
        self.files = files
        self.runner = runner
        self.commands = commands
        self.compactor = compactor
        self.model = model
        self.clock = clock
        self.reviews = reviews
        self.admit = admit
        """Roles and limits (ganglion/access.py): None lets the turn run, "" skips it
        silently, any other text refuses it with that reply."""
        self.sees_details = sees_details or (lambda _msg: True)
        """Whether the sender may read why the model failed (endpoints, addresses, config
        keys): the owner and trusted users; the others get the error's ``brief``."""
        self.context_tokens_for = context_tokens_for or (lambda _m: compactor.context_tokens)
        """The context budget of a model (``llm.models.<id>.context_tokens``, else llm's)."""
        self.tools_note = tools_note
        """What the model is told of tools it lacks now (MCP servers down); "" for nothing."""
        self.titles = titles
        """Asks a web conversation's short title after its first exchange (background)."""
        self.vision = vision
        """Puts the context's images into the prompt (None: no media store, text only)."""
        self.attachments = attachments
        """Transcribes a message's voice and saves its files before the turn (None: not)."""
        self.calibration = Calibration()
        self.progress = Progress(router)
        self.journal = StepJournal(history)
        self.store = TurnStore(history, router, self.progress)
        self.loop = ToolLoop(
            llm=llm, router=router, tools=tools, runner=runner, journal=self.journal,
            progress=self.progress, max_tool_steps=max_tool_steps, calibration=self.calibration,
            # The thread's model (``/model``), else ``model``.
            model_for=model_for or (lambda _tid: self.model))
        self._compaction_paused: dict[ThreadId, float] = {}
        """Until when (monotonic) compaction is not tried again, per thread, after a failure."""
        commands.add("new", "/new", "start a fresh conversation in this thread", self._cmd_new)
        commands.add("compact", "/compact", "summarise the conversation so far now",
                     self._cmd_compact)

    # -- the bus's TurnHandler -------------------------------------------------------------

    async def run_turn(self, msg: Inbound) -> None:
        tid = msg.thread_id
        started = time.monotonic()
        control = self.is_immediate(msg)  # runs beside the thread's turn: leave its state be
        if not control:
            if self.titles is not None:
                self.titles.turn_begins(tid)
            self.progress.begin(tid, quiet=msg.source in (Source.REMINDER, Source.HEARTBEAT),
                                answering=msg.id)
            await self.progress.state(tid, "thinking")
        failed = True  # unless the turn returns
        try:
            new = await self._turn(msg)
            failed = False
        except (LLMUnavailable, LLMBadResponse) as err:
            log.warning("[%s] turn failed: %s", tid, err)
            told = str(err) if self.sees_details(msg) else err.brief
            new = [*await self.journal.kept(msg, or_none=True), notice(msg, told)]
        except asyncio.CancelledError:
            raise
        except sqlite3.Error as err:  # the disk refused a write: say so, not "crashed"
            log.error("[%s] turn failed: the database refused a write: %s", tid, err)
            new = [*await self.journal.kept(msg, or_none=True), notice(
                msg, f"I could not write to my database ({err}). {why_refused(err)}; once "
                     "that is fixed, please send your message again.")]
        except Exception as err:
            log.exception("[%s] turn crashed", tid)
            new = [*await self.journal.kept(msg, or_none=True), notice(msg, CRASHED.format(
                type(err).__name__))]
        tokens = 0
        if not control:
            tokens = self.progress.answered(tid)
            if msg.source is Source.HEARTBEAT and self.reviews is not None:
                new = await self.reviews.finished(msg, new, tokens)
        try:
            await self.store.finish(msg, new, idle=not control, failed=failed)
        finally:
            if not control:
                self.progress.end(tid)
        took = time.monotonic() - started
        log.info("[%s] turn done in %.1f ms, %d tokens", tid, took * 1000, tokens)
        if self.on_turn_done is not None:
            self.on_turn_done(took)

    def is_immediate(self, msg: Inbound) -> bool:
        call = parse_command(msg.text)
        return call is not None and self.commands.is_immediate(call.name)

    async def turn_stopped(self, msg: Inbound) -> None:
        partial = self.progress.stopped(msg.thread_id)
        new = await self.journal.kept(msg, or_none=True)
        if partial.strip():
            new.append(NewMessage("assistant", partial + " …", deliver=not msg.system))
        new.append(notice(msg, "Stopped."))
        await self.store.finish(msg, new)

    # -- one turn --------------------------------------------------------------------------

    async def _turn(self, msg: Inbound) -> list[NewMessage]:
        refusal = await self.admit(msg) if self.admit is not None else None
        if refusal is not None:
            return [notice(msg, refusal)] if refusal else []
        call = parse_command(msg.text)
        if call is not None:
            reply = await self.commands.run(call, msg)
            return [notice(msg, reply)]
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
            redo = REDO in msg.meta  # its files were made text when first asked
            ready = (await self.attachments.prepare(msg, await self.history.context(tid))
                     if self.attachments is not None and msg.attachments and not redo
                     else None)
            if not regenerates(msg):  # a regenerate answers the question history holds
                await self.history.begin_turn(msg, ready.text if ready else msg.text)
            for line in ready.notices if ready else ():  # now: the words before the answer
                await self.router.broadcast(line, tid)
            if ready is not None and not ready.answer:
                return []
            context = await self.history.context(tid)
        # A run of this turn that was cut off (crash, restart) resumes after the tool calls
        # it made: they are not made again.
        new = await self.journal.kept(msg)
        if new:
            log.info("[%s] resuming message #%d after %d tool step(s) of an earlier run", tid,
                     msg.id, tool_steps(new))
        offer = self.loop.offer()
        inputs = self._inputs(msg, context, offer.names)
        fixed = fixed_texts(inputs)  # what the request carries besides the history
        # Everything the request carries counts: system texts, tool schemas, the history
        # (the pending message in it), scaled by what the model's server counted before.
        model = self.loop.model_for(tid)  # the thread's /model choice, for this turn
        vision = self.vision if reviews is None else None
        looks = await vision.look(context, model) if vision is not None else Looks()
        overhead = fixed_tokens(fixed, offer.tokens) + looks.tokens
        budget, scale = self.context_tokens_for(model), self.calibration.ratio(model)
        if reviews is None and self.compactor.needed(
                context, overhead, context_tokens=budget, scale=scale) and (
                await self._compact(msg, context, overhead, budget, self.compactor.fits(
                    context, overhead, context_tokens=budget, scale=scale))):
            context = await self.history.context(tid)
            inputs = replace(inputs, history=context)
            if vision is not None:  # the images that left the context cost no more
                before, looks = looks.tokens, await vision.look(context, model)
                overhead += looks.tokens - before
        prompt = build_messages(inputs, fixed)
        seen = await vision.apply(prompt, context, looks) if vision is not None else prompt
        new = await self.loop.run(msg, list(seen), new, offer,
                                  allow_empty=reviews is not None,
                                  estimate=overhead + context_size(context))
        blind = (await vision.cannot_see(msg.id, model)
                 if vision is not None and msg.attachments else None)
        if blind is not None:  # told first, then the answer to the text
            new.insert(0, notice(msg, blind))
        if self.titles is not None and reviews is None:  # the text: the title model may be blind
            self.titles.consider(msg, prompt, new, offer.schemas)
        return new

    async def _compact(self, msg: Inbound, context: list[StoredMessage], overhead: int,
                       budget: int, fits: bool) -> bool:
        """Summarise the thread's older part; True when the context changed (the user is
        notice_text). A failure while the whole history still fits answers with it, and waits
        COMPACTION_PAUSE_SECONDS before the next try (each costs a call and a memory flush);
        once it no longer fits, the turn fails saying what to do."""
        tid = msg.thread_id
        if fits and time.monotonic() < self._compaction_paused.get(tid, 0.0):
            return False
        # A summary of a long history takes a while on a local model: the page says so.
        await self.progress.state(tid, "summarising")
        try:
            notice_text = await self.compactor.compact(
                tid, context, overhead_tokens=overhead, context_tokens=budget)
        except (LLMUnavailable, LLMBadResponse) as err:
            if not fits:
                raise LLMUnavailable(
                    f"This conversation is now too long for the model, and summarising its "
                    f"older part failed: {err} Start afresh with /new, or check "
                    "llm.compaction_model.",
                    brief="This conversation is now too long for the model, and summarising "
                          "its older part failed. Start afresh with /new, or try later."
                ) from err
            log.warning("[%s] compaction failed, answering with the full history; next try "
                        "in %d s: %s", tid, COMPACTION_PAUSE_SECONDS, err)
            self._compaction_paused[tid] = time.monotonic() + COMPACTION_PAUSE_SECONDS
            if len(self._compaction_paused) > 1000:
                del self._compaction_paused[next(iter(self._compaction_paused))]
            await self.progress.state(tid, "thinking")
            return False
        await self.progress.state(tid, "thinking")
        self._compaction_paused.pop(tid, None)
        if notice_text is None:
            return False
        if not msg.system:  # now: the turn's own notices come at its end
            await self.router.broadcast(notice_text, msg.thread_id)
        return True

    def _inputs(self, msg: Inbound, context: list[StoredMessage],
                offered: Sequence[str]) -> PromptInputs:
        return PromptInputs(
            base_prompt=self.files.read(BASE_PROMPT),
            memories=neutralise(self.files.read(MEMORIES)),  # tools write them: untrusted
            heartbeats=neutralise(self.files.read(HEARTBEATS)),
            skills=self.files.skills(),
            now=self.clock(),
            history=context,
            tool_names=offered,
            tools_note=self.tools_note() if self.tools_note is not None else "",
            interface=_interface_of(msg),
        )

    # -- commands --------------------------------------------------------------------------

    async def _cmd_new(self, msg: Inbound, args: str) -> str:
        dropped = await self.history.forget_context(msg.thread_id)
        return (NEW_CONVERSATION if dropped else
                "This conversation was already empty.") + " Memory files are kept."

    async def _cmd_compact(self, msg: Inbound, args: str) -> str:
        context = await self.history.context(msg.thread_id)
        await self.progress.state(msg.thread_id, "summarising")
        notice_text = await self.compactor.compact(msg.thread_id, context, force=True)
        return notice_text or "Nothing to compact yet."


def _interface_of(msg: Inbound) -> str:
    if msg.system:
        return ("an autonomous background task (nothing you write is shown to anyone; a tool "
                "that needs a person's approval is refused here)")
    if is_matrix_thread(msg.thread_id):
        room = matrix_room_of(msg.thread_id)
        if room != msg.thread_id:
            return f"a thread of the Matrix room {room}"
        return f"the Matrix room {room}"
    return "a browser tab of the web UI"
