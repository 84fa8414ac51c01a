"""A length of time in words for people: ``45 s``, ``2 min 30 s``, ``3 h 5 min``, ``2 d 4 h``.

Place in the flow: a leaf that imports nothing of ours, so storage (the reminders' mirror),
the tools, the approvals and the limits all say a length of time the same way.
"""

from __future__ import annotations

import math

_UNITS = (("d", 86_400), ("h", 3_600), ("min", 60), ("s", 1))


def duration_text(seconds: float, *, round_up: bool = False) -> str:
    """``seconds`` in at most two units: to the second under 10 minutes, to the minute under a
    day, to the hour beyond (a person reads "3 h 5 min", not "3 h 5 min 12 s").

    Rounded to the nearest step, or up with ``round_up``: a wait ("try again in ...") must
    never be said shorter than it is. Under a second (test time-outs) it keeps its fraction.
    """
    seconds = max(0.0, seconds)
    if seconds < 1:
        return f"{seconds:.2g} s"
    step = 1 if seconds < 600 else 60 if seconds < 86_400 else 3_600
    rest = (math.ceil(seconds / step) if round_up else round(seconds / step)) * step
    parts: list[str] = []
    for unit, size in _UNITS:
        count, rest = divmod(rest, size)
        if count:
            parts.append(f"{count} {unit}")
    return " ".join(parts)
