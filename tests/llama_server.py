"""What the local-model test and benchmark share: the questions of their conversation and
llama.cpp's prompt-cache counters."""

from __future__ import annotations

import aiohttp

QUESTIONS = [
    "Hi! In one short sentence: what can you do?",
    "Name three fruits, one line.",
    "What is 12 times 7? Just the number.",
    "Give me a synonym of 'quick', one word.",
    "What day comes after Tuesday? One word.",
    "Name a primary colour. One word.",
    "What is the capital of France? One word.",
    "Spell 'cat' backwards. One word.",
    "How many legs does a spider have? Just the number.",
    "Say goodbye in French. One word.",
]
"""Small talk a small model answers in words: a question that tempts it to a tool (a sum
it may save to memory, say) would change the memory files the prompt's head carries."""


async def prompt_counters(session: aiohttp.ClientSession, server: str) -> tuple[int, int]:
    """The server's totals of prompt tokens read anew and reused from its cache (its
    ``/metrics``, on when it runs with ``--metrics``)."""
    async with session.get(f"{server}/metrics") as resp:
        text = await resp.text()
    found = dict(line.split()[:2] for line in text.splitlines()
                 if line.startswith("llamacpp:prompt_tokens_"))
    try:
        return (int(float(found["llamacpp:prompt_tokens_total"])),
                int(float(found["llamacpp:prompt_tokens_cached_total"])))
    except KeyError:
        raise RuntimeError("no prompt token counters: start llama-server with --metrics") from None
