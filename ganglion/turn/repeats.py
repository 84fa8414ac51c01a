"""A model going round in circles: the same tool call, with the same result, again and again.

A small local model may call ``memory_read`` twelve times in a row, each time getting the
same text, until the turn hits ``llm.max_tool_steps`` (seen on Qwen2.5-Coder 0.5B: 25 s
of a person's wait for nothing). A call made twice with the same result is not run a third
time: the model gets plain guidance instead (the result is above; use it or answer). A model
that makes that call again all the same ends the turn, with a notice.

Only a call whose last two results were the same (but for the random tags of their data
markers) is held: reading a file again after
editing it gets a new result and runs. Calls are compared by name and decoded arguments
(key order and spacing do not matter). The turn's kept steps are replayed first, so a
re-run after a restart counts what the first run did.
"""

from __future__ import annotations

import json
from collections import defaultdict

from ganglion.storage.history import NewMessage
from ganglion.untrusted import untagged

REPEAT_GUIDANCE = ("error: not run: this exact call was made {times} times in this turn and "
                   "gave the same result each time (it is above). Use that result, or answer "
                   "the user now.")
"""What the model gets instead of running a call it keeps repeating (guidance, not data)."""


def call_key(name: str, arguments: str) -> tuple[str, str]:
    """A call's identity: its tool and its arguments, decoded when they are JSON."""
    try:
        canonical = json.dumps(json.loads(arguments), sort_keys=True)
    except ValueError:
        canonical = arguments
    return name, canonical


class Repeats:
    """The results of each distinct call of one turn, and the calls held back."""

    def __init__(self, steps: list[NewMessage]) -> None:
        self._results: dict[tuple[str, str], list[str]] = defaultdict(list)
        self._held: dict[tuple[str, str], int] = defaultdict(int)
        self.stuck: str | None = None
        """The tool of a call made again after the guidance: the turn should end."""
        calls: dict[str | None, tuple[str, str]] = {}
        for m in steps:
            for c in m.tool_calls or ():
                calls[c["id"]] = call_key(c["function"]["name"], c["function"]["arguments"])
            if m.role == "tool" and m.tool_call_id in calls:
                self._note(calls[m.tool_call_id], m.content)

    def hold(self, name: str, arguments: str) -> str | None:
        """The guidance to give instead of running this call, or None to run it."""
        key = call_key(name, arguments)
        results = self._results[key]
        if len(results) < 2 or results[-1] != results[-2]:
            return None
        self._held[key] += 1
        if self._held[key] > 1:
            self.stuck = name
        return REPEAT_GUIDANCE.format(times=len(results))

    def record(self, name: str, arguments: str, result: str) -> None:
        self._note(call_key(name, arguments), result)

    def _note(self, key: tuple[str, str], result: str) -> None:
        if result.startswith(REPEAT_GUIDANCE[:20]):
            self._held[key] += 1  # held in an earlier run of this turn
        else:
            self._results[key].append(untagged(result))
