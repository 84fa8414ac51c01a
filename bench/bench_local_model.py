"""Time to first token on a real local model (llama.cpp): what the prompt cache saves.

Not in the suite and never in CI: it needs llama.cpp's server with a small model running
(see ../shared/notes/local-model.md; start it with ``--metrics``). For each source tree
given (``--tree before=/work/main --tree after=.``), the real daemon of that tree runs as a
child process on the server, and one conversation of ``--messages`` messages goes through
its WebSocket, as the page sends them. Per message: seconds from the send to the first
streamed token, to the answer, and the prompt tokens the server read anew (the growth of its
``llamacpp:prompt_tokens_total`` counter) and reused from its cache
(``llamacpp:prompt_tokens_cached_total``).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from common import report
from daemon import Daemon
from llama_server import QUESTIONS, prompt_counters
from wsclient import ChatClient

TOKEN = "bench-local-model-token-0123456789"


async def one_message(chat: ChatClient, text: str) -> tuple[float, float]:
    """Seconds to the first streamed token and to the final answer."""
    started = time.monotonic()
    ack = await chat.send(text)
    assert ack["type"] == "ack", ack
    first = None
    while True:
        event = await chat.next_event(600)
        if event["type"] == "delta" and first is None:
            first = time.monotonic() - started
        if event["type"] == "message" and event.get("role") == "assistant":
            done = time.monotonic() - started
            return (first if first is not None else done), done


async def run_tree(label: str, tree: Path, args: argparse.Namespace) -> dict[str, Any]:
    server, model, messages = args.server, args.model, args.messages
    config = {
        "llm": {"endpoints": [{"name": "llama", "base_url": f"{server}/v1",
                               "timeout_seconds": 900}],
                "model": model, "context_tokens": args.context_tokens, "retries": 0},
        "web": {"token": TOKEN},
        "heartbeat": {"enabled": False},
        "paths": {"data_dir": "data", "log_dir": "logs"},
    }
    # The tree's own package first on the path: the same interpreter and dependencies.
    command = [sys.executable, "-c",
               f"import runpy, sys; sys.path.insert(0, {str(tree)!r}); "
               "runpy.run_module('ganglion', run_name='__main__')"]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        daemon = Daemon(Path(tmp), config)
        daemon.start(command=command)
        try:
            await daemon.wait_ready(60)
            thread = None
            async with aiohttp.ClientSession() as session:
                for i in range(messages):
                    if i:
                        await asyncio.sleep(args.pause)
                    # The tab again each time (as a reload does): a socket nobody reads
                    # during the pause misses the server's pings and is closed.
                    chat = ChatClient(daemon.url, TOKEN, thread)
                    await chat.connect()
                    thread = chat.thread_id
                    read, cached = await prompt_counters(session, server)
                    first, done = await one_message(chat, QUESTIONS[i % len(QUESTIONS)])
                    await chat.close()
                    read_after, cached_after = await prompt_counters(session, server)
                    rows.append({"message": i + 1, "first_token_s": round(first, 2),
                                 "answer_s": round(done, 2),
                                 "prompt_tokens_read": read_after - read,
                                 "prompt_tokens_cached": cached_after - cached,
                                 "at": time.strftime("%H:%M:%S")})
                    print(label, rows[-1], file=sys.stderr)
        finally:
            daemon.kill()
    later = [r["first_token_s"] for r in rows[1:]]
    return {"tree": str(tree), "messages": rows,
            "first_token_2_to_n": {"median": statistics.median(later) if later else None,
                                   "max": max(later) if later else None},
            "prompt_tokens_read_2_to_n": sum(r["prompt_tokens_read"] for r in rows[1:]),
            "prompt_tokens_cached_2_to_n": sum(r["prompt_tokens_cached"] for r in rows[1:])}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--server", default="http://127.0.0.1:18181")
    parser.add_argument("--model", default="q05.gguf")
    parser.add_argument("--tree", action="append", default=[],
                        help="LABEL=PATH of a source tree (default: after=this one)")
    parser.add_argument("--messages", type=int, default=10)
    parser.add_argument("--pause", type=float, default=20.0,
                        help="seconds between an answer and the next message (a person "
                             "reading and typing: the conversation crosses minute boundaries)")
    parser.add_argument("--context-tokens", type=int, default=8192)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.tree = [(label, Path(os.path.abspath(path))) for label, path in
                 (t.split("=", 1) for t in args.tree)] or [("after", ROOT)]
    return args


async def main(args: argparse.Namespace) -> None:
    trees: list[tuple[str, Path]] = args.tree
    results = {label: await run_tree(label, path, args) for label, path in trees}
    report(results, args.json)


if __name__ == "__main__":
    asyncio.run(main(parse_args()))
