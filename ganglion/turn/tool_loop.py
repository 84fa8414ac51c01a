"""The loop of a turn: model call, its tool calls, model call... until an answer or the limit."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ganglion.llm.client import LLMClient
from ganglion.llm.results import ChatResult
from ganglion.messages import Inbound, Outbound, OutKind, Source, ThreadId
from ganglion.router import Router
from ganglion.storage.history import NewMessage
from ganglion.tools.policy import ToolRunner
from ganglion.tools.registry import ToolContext, ToolRegistry
from ganglion.turn.budget import Calibration, schema_tokens
from ganglion.turn.journal import StepJournal, tool_steps
from ganglion.turn.progress import Progress
from ganglion.turn.repeats import Repeats
from ganglion.turn.store import notice

log = logging.getLogger(__name__)

EMPTY_ANSWER = ("The language model (endpoint '{}') sent an empty answer. Please try again, "
                "perhaps in other words; if it keeps happening, its server's log should say why.")

REPEATING = ("I stopped: the model kept making the same call to `{}` with the same result "
             "instead of answering. Ask again, perhaps in other words, or try another model.")


@dataclass(frozen=True, slots=True)
class Offer:
    """The tools one turn may use: their names and schemas, sorted by name (part of the
    prompt's lasting head: byte-identical from turn to turn), and what the schemas cost."""

    names: tuple[str, ...]
    schemas: list[dict[str, Any]] | None
    tokens: int


class ToolLoop:
    """Runs the model over a prompt, the tools it calls, and the model again, streaming each
    answer to the thread's tabs and journaling each step as it happens."""

    def __init__(
        self,
        *,
        llm: LLMClient,
        router: Router,
        tools: ToolRegistry,
        runner: ToolRunner,
        journal: StepJournal,
        progress: Progress,
        model_for: Callable[[ThreadId], str],
        max_tool_steps: int,
        calibration: Calibration | None = None,
    ) -> None:
        self.llm = llm
        self.router = router
        self.tools = tools
        self.runner = runner
        """Every tool call goes through it: policy, approval, logging, untrusted output."""
        self.journal = journal
        self.progress = progress
        self.model_for = model_for
        self.max_tool_steps = max_tool_steps
        self.calibration = calibration if calibration is not None else Calibration()
        """Fed with the server's count of each turn's first prompt (see ``run``)."""
        self._offers: dict[tuple[int, tuple[str, ...]], Offer] = {}
        """By the registry's revision and the names offered: the same few sets every turn,
        their schemas built and measured once."""

    def offer(self) -> Offer:
        """The tools every turn is offered: the same for a background turn as for a
        person's, so the prompt's head stays byte-identical for the server's cache (a
        heartbeat's own set would make the next message re-read it all); a background turn
        is refused its ``ask`` tools when it calls them (see ``run``)."""
        names = tuple(sorted(self.runner.offered(can_ask=True)))
        key = (self.tools.revision, names)
        offer = self._offers.get(key)
        if offer is None:
            if any(rev != self.tools.revision for rev, _ in self._offers):
                self._offers.clear()  # the registry changed: those sets are stale
            schemas = sorted(self.tools.schemas(set(names)),
                             key=lambda s: str(s["function"]["name"]))
            offer = self._offers[key] = Offer(names, schemas or None, schema_tokens(schemas))
        return offer

    async def run(
        self, msg: Inbound, prompt: list[dict[str, Any]], new: list[NewMessage], offer: Offer,
        *, allow_empty: bool = False, estimate: int = 0,
    ) -> list[NewMessage]:
        """``new`` (the steps an earlier run kept) with this run's steps and its answer or
        notice; ``offer``: the tools the prompt was built with. ``allow_empty``: an empty
        answer is the answer (a review's "nothing"). ``estimate``: our estimate of
        ``prompt`` with the tools, as the budget counts it; the server's count of it
        calibrates the thread's model."""
        tid = msg.thread_id
        messages = prompt + [_model_message(m) for m in new]
        schemas = offer.schemas
        # Who is present decides what runs: nobody can approve a background turn's call.
        offered = (offer.names if person_present(msg) else
                   frozenset(self.runner.offered(can_ask=False)))
        ctx = ToolContext(tid, msg.sender)
        first = not new  # the request is exactly the one estimated
        repeats = Repeats(new)
        for _step in range(tool_steps(new), self.max_tool_steps):
            model = self.model_for(tid)
            result = await self._chat(tid, messages, schemas)
            if first and not result.usage.estimated:
                self.calibration.observe(model, estimate, result.usage.prompt_tokens)
            first = False
            if not result.tool_calls:
                if not result.content.strip() and not allow_empty:
                    # Well-formed but saying nothing: no empty bubble (a review's silence is
                    # its way of saying "nothing to report", so it keeps its empty answer).
                    log.warning("[%s] %s sent an empty answer", tid, result.endpoint)
                    new.append(notice(msg, EMPTY_ANSWER.format(result.endpoint)))
                    return new
                # result.answer: the content, marked if it was cut off or stopped looping.
                new.append(NewMessage("assistant", result.answer, deliver=not msg.system,
                                      tokens=result.usage.completion_tokens))
                return new
            calls = [
                {"id": c.id, "type": "function",
                 "function": {"name": c.name, "arguments": c.arguments}}
                for c in result.tool_calls
            ]
            await self.journal.add(msg, new, NewMessage("assistant", result.content,
                                                         tool_calls=calls, visible=False))
            messages.append(_model_message(new[-1]))
            for c in result.tool_calls:
                text = repeats.hold(c.name, c.arguments)
                if text is not None:
                    log.info("[%s] %s called again with the same arguments and result: not run",
                             tid, c.name)
                else:
                    await self.progress.state(tid, "tool")
                    run = await self.runner.run(c.name, c.arguments, ctx, offered)
                    if not msg.system and self.progress.shown(tid):  # shown as it happens
                        await self.router.broadcast(run.display, tid, role="tool")
                    text = run.text
                    repeats.record(c.name, c.arguments, text)
                await self.journal.add(msg, new, NewMessage("tool", text, tool_call_id=c.id,
                                                            name=c.name, visible=False))
                messages.append(_model_message(new[-1]))
            if repeats.stuck is not None:
                log.warning("[%s] the model kept repeating a call to %s: turn ended", tid,
                            repeats.stuck)
                new.append(notice(msg, REPEATING.format(repeats.stuck)))
                return new
        new.append(notice(
            msg, f"I stopped after {self.max_tool_steps} tool steps without a final answer "
                 "(llm.max_tool_steps). Ask me to continue if you want more."))
        return new

    async def _chat(
        self, tid: ThreadId, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> ChatResult:
        partial = self.progress.stream(tid)
        streaming = False

        async def on_delta(text: str) -> None:
            nonlocal streaming
            if not self.progress.shown(tid):
                return
            if not streaming:
                streaming = True
                await self.progress.state(tid, "streaming")
            partial.append(text)
            await self.router.publish(Outbound(tid, OutKind.DELTA, text))

        async def on_reset() -> None:
            partial.clear()
            if self.progress.shown(tid):
                await self.router.publish(Outbound(tid, OutKind.RESET))

        result = await self.llm.chat(messages, model=self.model_for(tid), tools=tools,
                                     on_delta=on_delta, on_reset=on_reset, thread_id=tid)
        log.debug("[%s] %s answered: %d+%d tokens", tid, result.endpoint,
                  result.usage.prompt_tokens, result.usage.completion_tokens)
        self.progress.spend(tid, result.usage.total)
        return result


def _model_message(m: NewMessage) -> dict[str, Any]:
    """A message of the tool exchange as the model's API takes it."""
    if m.role == "tool":
        return {"role": "tool", "tool_call_id": m.tool_call_id, "content": m.content}
    return {"role": "assistant", "content": m.content or None, "tool_calls": m.tool_calls}


def person_present(msg: Inbound) -> bool:
    """A person wrote this turn's message, so someone can answer an approval request (a
    review or a reminder has nobody waiting: its ``ask`` tools are not offered)."""
    return not msg.system and msg.source in (Source.WEB, Source.MATRIX)
