"""Markdown rendering benchmark: the server's renderer (bare URLs linked) against markdown-it
configured as it was before linkify, on answers without and with URLs. Both in one process,
in turn, so the machine's load weighs on both alike. Usage:

    uv run python bench/bench_render.py [--repeat 7] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import timeit
from pathlib import Path
from typing import Any

from markdown_it import MarkdownIt

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import report

from ganglion.render import MarkdownRenderer

PROSE = ("Here is what I found. The **config** lives in `config.yaml`, and the notes in "
         "app.py. Then run it again: it works.\n\n")
LINKED = ("Here is what I found. The **config** lives in `config.yaml`; see "
          "https://example.com/docs/a?b=1 and the notes in app.py.\n\n")
ANSWERS = {
    "short (echo: turn 12)": ("echo: turn 12", 2000),
    "2.4 kB, no URL": (PROSE * 20 + "```python\ndef f(x):\n    return x * 2\n```\n", 200),
    "2.8 kB, 20 URLs": (LINKED * 20, 200),
}


def before() -> MarkdownIt:
    """The renderer's configuration before bare URLs were linked."""
    md = MarkdownIt("commonmark", {"html": False, "linkify": False, "typographer": False})
    return md.enable("table").enable("strikethrough")


def main() -> dict[str, Any]:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    old, new = before(), MarkdownRenderer()
    results: dict[str, Any] = {}
    for name, (text, number) in ANSWERS.items():
        times = {}
        for label, render in (("before_us", old.render), ("after_us", new.html)):
            runs = timeit.repeat(lambda r=render, t=text: r(t), number=number,
                                 repeat=args.repeat)
            best = min(runs)
            times[label] = round(best / number * 1e6, 1)
        results[name] = times
    report(results, args.json)
    return results


if __name__ == "__main__":
    main()
