"""What a running turn shows while it runs: its state, the answer streaming, its tokens."""

from __future__ import annotations

from ganglion.messages import Outbound, OutKind, ThreadId
from ganglion.router import Router


class Progress:
    """Per thread, for the running turn only: each entry is dropped when its turn ends."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.partial: dict[ThreadId, list[str]] = {}
        """The answer streamed so far, which a Stop keeps."""
        self.quiet: set[ThreadId] = set()
        """Threads whose running turn nobody typed (a reminder, a review): no progress
        events. Emptied at the end of each turn, so it holds only running turns."""
        self.spent: dict[ThreadId, int] = {}
        """Tokens of the running turn."""
        self.answering: dict[ThreadId, int] = {}
        """The inbox id of the thread's latest turn, sent with its states (an interface
        ties the answer streaming to the message it answers); kept until the next turn."""

    def begin(self, tid: ThreadId, *, quiet: bool, answering: int = 0) -> None:
        self.spent[tid] = 0
        self.answering[tid] = answering
        if quiet:
            self.quiet.add(tid)

    def shown(self, tid: ThreadId) -> bool:
        """Whether the thread's tabs see this turn's progress."""
        return tid not in self.quiet

    async def state(self, tid: ThreadId, state: str) -> None:
        """"thinking", "summarising" (compaction), "tool", "streaming"; the store ends the
        turn with "idle" or "error"."""
        if self.shown(tid):
            await self.router.publish(Outbound(tid, OutKind.STATE, state,
                                               reply_to=self.answering.get(tid, 0)))

    def stream(self, tid: ThreadId) -> list[str]:
        """The buffer of a model call that starts streaming (a call's answer replaces the
        previous call's)."""
        partial = self.partial.setdefault(tid, [])
        partial.clear()
        return partial

    def spend(self, tid: ThreadId, tokens: int) -> None:
        self.spent[tid] = self.spent.get(tid, 0) + tokens

    def answered(self, tid: ThreadId) -> int:
        """The turn has its outcome: nothing streams any more; the tokens it spent."""
        self.partial.pop(tid, None)
        return self.spent.pop(tid, 0)

    def stopped(self, tid: ThreadId) -> str:
        """The turn was cancelled: what it had streamed; everything of it is dropped."""
        partial = "".join(self.partial.pop(tid, []))
        self.spent.pop(tid, None)
        self.quiet.discard(tid)
        return partial

    def end(self, tid: ThreadId) -> None:
        """After the turn's last event (a system thread never has a typed turn to clear it)."""
        self.quiet.discard(tid)
