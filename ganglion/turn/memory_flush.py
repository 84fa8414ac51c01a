"""Before compaction: the model saves durable facts from the messages about to be summarised."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from ganglion.errors import LLMBadResponse, LLMUnavailable
from ganglion.llm.client import LLMClient
from ganglion.messages import ThreadId
from ganglion.storage.files import MEMORIES, DataFiles
from ganglion.storage.history import StoredMessage
from ganglion.tools.policy import ToolRunner
from ganglion.tools.registry import ToolContext
from ganglion.turn.compaction import transcript_text
from ganglion.untrusted import neutralise

log = logging.getLogger(__name__)

FLUSH_INSTRUCTIONS = """\
The conversation below is about to be summarised, and its full text will leave your context.
This is your one chance to keep what matters for the long term. Save durable facts about the
user that MEMORIES.txt does not hold yet: who they are, people and places in their life,
preferences, decisions, commitments, dates. Use memory_append for each new fact (one short
line each) and memory_replace to correct a line that is out of date. Do not save small talk,
passing details or what is already there. If nothing is worth keeping, answer "nothing".

Current MEMORIES.txt:
{memories}"""

FLUSH_TOOLS = ("memory_append", "memory_replace")
MAX_FLUSH_CALLS = 20


class MemoryFlush:
    """The Compactor's ``before`` hook: one model call, with only the memory tools, over the
    messages about to be summarised."""

    def __init__(self, llm: LLMClient, model: str, runner: ToolRunner, files: DataFiles) -> None:
        self.llm = llm
        self.model = model
        self.runner = runner
        self.files = files

    async def __call__(self, thread_id: ThreadId, old: Sequence[StoredMessage]) -> None:
        allowed = [n for n in self.runner.offered(can_ask=False) if n in FLUSH_TOOLS]
        # An earlier summary's facts were offered to memory when it was written.
        old = [m for m in old if m.role != "summary"]
        if not allowed or not old:
            return
        memories = neutralise(self.files.read(MEMORIES).strip()) or "(empty)"
        messages = [
            {"role": "system", "content": FLUSH_INSTRUCTIONS.format(memories=memories)},
            {"role": "user", "content": transcript_text(old)},
        ]
        try:
            result = await self.llm.chat(messages, model=self.model, thread_id=thread_id,
                                         tools=self.runner.registry.schemas(set(allowed)))
        except (LLMUnavailable, LLMBadResponse) as err:
            log.warning("[%s] memory flush before compaction skipped: %s", thread_id, err)
            return
        ctx = ToolContext(thread_id, "memory flush")
        saved = 0
        for call in result.tool_calls[:MAX_FLUSH_CALLS]:
            run = await self.runner.run(call.name, call.arguments, ctx, allowed)
            saved += run.ok
        log.info("[%s] memory flush before compaction: %d of %d call(s) saved", thread_id,
                 saved, len(result.tool_calls))
