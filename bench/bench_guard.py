"""Repetition guard benchmark: what watching a streamed answer for a loop costs per delta.

The guard (``ganglion/llm/repetition.py``) sees every delta of every streamed answer. Its
cost per delta must not grow with the answer: answers of 10,000 and 100,000 characters, in
deltas of 4 characters (about one token each), should cost the same per delta. Three kinds
of text: prose that never repeats, a markdown table of similar rows (many candidate cycles
to rule out, the guard's worst case for ordinary text), and a loop (until it trips).
Target: under 5 µs per delta on average, the same for both lengths.

Usage:

    uv run python bench/bench_guard.py [--json out.json]
"""

from __future__ import annotations

import argparse
import random
import string
import time
from pathlib import Path
from typing import Any

from common import report

from ganglion.llm.repetition import RepetitionGuard


def prose(chars: int) -> str:
    rng = random.Random(7)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 9)))
             for _ in range(chars // 3)]
    return " ".join(words)[:chars]


def table(chars: int) -> str:
    rows = (f"| {i} | Snack {i % 7} | {i * 1.25:.2f} |\n" for i in range(1, chars))
    text = ""
    for row in rows:
        text += row
        if len(text) >= chars:
            return text[:chars]
    return text


def per_delta_us(text: str, size: int = 4) -> tuple[float, bool]:
    """Mean cost of one delta in µs, and whether the guard tripped."""
    guard = RepetitionGuard()
    deltas = [text[i:i + size] for i in range(0, len(text), size)]
    fed = 0
    start = time.perf_counter()
    tripped = False
    for delta in deltas:
        fed += 1
        if guard.looping(delta):
            tripped = True
            break
    return (time.perf_counter() - start) / fed * 1e6, tripped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    results: dict[str, Any] = {}
    for chars in (10_000, 100_000):
        for name, text in (("prose", prose(chars)), ("table", table(chars))):
            cost, tripped = per_delta_us(text)
            results[f"{name} {chars:,} chars: us per delta"] = round(cost, 2)
            results[f"{name} {chars:,} chars: tripped"] = tripped
    cost, tripped = per_delta_us("Miscellaneous: Snacks, chips and nuts. " * 3000)
    results["loop: us per delta until it trips"] = round(cost, 2)
    results["loop: tripped"] = tripped
    report(results, args.json)


if __name__ == "__main__":
    main()
