"""The context budget of a turn: what a request costs by our estimate, calibrated per model.

Our estimate (``ganglion.tokens``) is a guess of four characters a token; a server that
reports ``usage.prompt_tokens`` tells how far off it is for its model. One ratio per model
(the server's count over our estimate of the same request, smoothed) scales later estimates,
so compaction starts before the server's own limit rather than after it.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from ganglion.tokens import estimate_tokens, message_tokens

SMOOTHING = 0.5
"""How much of a new observation a model's ratio takes (the rest is its history)."""
RATIO_BOUNDS = (1.0, 8.0)
"""A report outside these is taken at the bound. Never below our own estimate: some servers
count only the prompt tokens they did not have cached (or leave out the tools), and trusting
that would start compaction after the server's limit instead of before it."""


def schema_tokens(tools: Sequence[dict[str, Any]] | None) -> int:
    """What the ``tools`` JSON costs (the server renders the schemas into the prompt: often
    its largest part)."""
    return estimate_tokens(json.dumps(list(tools), ensure_ascii=False)) if tools else 0


def fixed_tokens(texts: Sequence[str], tools_tokens: int) -> int:
    """What a request costs besides the history: its own messages and the tool schemas."""
    return sum(message_tokens(t) for t in texts) + tools_tokens


class Calibration:
    """Per model: how many tokens its server counts for each token we estimate."""

    def __init__(self) -> None:
        self._ratios: dict[str, float] = {}

    def observe(self, model: str, estimated: int, counted: int) -> None:
        """The server counted ``counted`` prompt tokens where we estimated ``estimated``."""
        if estimated <= 0 or counted <= 0:
            return
        low, high = RATIO_BOUNDS
        seen = min(max(counted / estimated, low), high)
        old = self._ratios.get(model)
        self._ratios[model] = seen if old is None else old + (seen - old) * SMOOTHING

    def ratio(self, model: str) -> float:
        """1.0 until the model's server has counted a prompt."""
        return self._ratios.get(model, 1.0)
