"""A guard against a streamed answer caught in a loop: its end repeating one short cycle.

Place in the flow: ``LLMClient`` feeds it every streamed delta; once it trips, the client closes
the stream (so the server stops generating) and the answer is marked as stopped. Small models
do loop ("Miscellaneous: Snacks..." until the server's own limit, 8,192 tokens and minutes
later), and ``max_tokens`` alone would let them run to the cap.

The thresholds are set so that ordinary text never trips it: a table's rows or a program's
lines differ somewhere (a number, a name), so their text is not one exact cycle, and a cycle
must cover at least ``min_span`` characters and repeat ``min_repeats`` times. Cost: the end
of the answer is checked every ``every`` characters over a window of fixed size, whatever the
answer's length.
"""

from __future__ import annotations

_PROBE = 8
"""Characters at the very end looked up again to find the candidate cycle lengths."""


class RepetitionGuard:
    """Says when the text fed so far ends with one cycle of 1..``max_cycle`` characters
    repeated over at least ``min_span`` characters and ``min_repeats`` times."""

    def __init__(self, *, max_cycle: int = 200, min_span: int = 600, min_repeats: int = 8,
                 every: int = 64) -> None:
        self.max_cycle = max_cycle
        self.min_span = min_span
        self.min_repeats = min_repeats
        self.every = every
        self.window = max(min_span, min_repeats * max_cycle)
        self.cycle = 0
        """The cycle's length once the guard tripped, else 0."""
        self._tail = ""
        self._fresh: list[str] = []
        self._fresh_chars = 0

    def looping(self, text: str) -> bool:
        """Take one more delta; True once the answer is looping."""
        self._fresh.append(text)
        self._fresh_chars += len(text)
        if self._fresh_chars < self.every:
            return False
        # Only the window is kept: each check costs the same, however long the answer.
        self._tail = (self._tail + "".join(self._fresh))[-self.window:]
        self._fresh.clear()
        self._fresh_chars = 0
        self.cycle = self._cycle(self._tail)
        return self.cycle > 0

    def _cycle(self, tail: str) -> int:
        """The shortest cycle the end of ``tail`` repeats enough, or 0."""
        n = len(tail)
        if n < self.min_span:
            return 0
        probe = tail[-_PROBE:]
        lowest = max(0, n - _PROBE - self.max_cycle)
        # Each earlier place of the last few characters is a candidate cycle length; most
        # text has none within max_cycle, so this is usually one failed search.
        pos = tail.rfind(probe, lowest, n - 1)
        while pos != -1:
            cycle = n - _PROBE - pos
            span = max(self.min_span, self.min_repeats * cycle)
            if span <= n and tail[n - span:n - cycle] == tail[n - span + cycle:]:
                return cycle
            pos = tail.rfind(probe, lowest, pos + _PROBE - 1)
        return 0
