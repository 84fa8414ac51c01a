"""The prompt cache on a real local model: llama.cpp's server, the real daemon, one conversation.

Optional, never in CI: it needs llama.cpp's server and a small model (see
../shared/notes/local-model.md), named by environment variables; without them every test
here is skipped with the reason. ``GANGLION_LLAMA_SERVER`` is the server executable
(``llama-server`` or a repackaging such as ``llama-server-vulkan``), ``GANGLION_LLAMA_MODEL``
the GGUF file, ``GANGLION_LLAMA_TEMPLATE`` an optional chat template (the notes' tool-call
template). For example::

    GANGLION_LLAMA_SERVER=$L/bin/llama-server-vulkan GANGLION_LLAMA_MODEL=$L/q05.gguf \\
    GANGLION_LLAMA_TEMPLATE=../shared/local-model/qwen25-tools.jinja \\
        uv run pytest tests/test_local_model.py

What is asserted comes from the server itself: its ``/metrics`` counters of prompt tokens
read anew (``llamacpp:prompt_tokens_total``) and reused from its cache
(``llamacpp:prompt_tokens_cached_total``), read before and after each message. Timings are
the benchmark's (bench/bench_local_model.py), not asserted here.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from conftest import eventually_async
from daemon import Daemon, free_port
from llama_server import QUESTIONS, prompt_counters

SERVER = os.environ.get("GANGLION_LLAMA_SERVER", "")
MODEL = os.environ.get("GANGLION_LLAMA_MODEL", "")
TEMPLATE = os.environ.get("GANGLION_LLAMA_TEMPLATE", "")
TOKEN = "local-model-test-token-0123456789"
MESSAGES = len(QUESTIONS)

pytestmark = pytest.mark.skipif(
    not (SERVER and MODEL and Path(SERVER).is_file() and Path(MODEL).is_file()),
    reason="no local model: set GANGLION_LLAMA_SERVER (llama.cpp's server) and "
           "GANGLION_LLAMA_MODEL (a GGUF file); see ../shared/notes/local-model.md")


@pytest.fixture(scope="module")
async def llama(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """llama.cpp's server on a free port with its metrics on; its URL once it is healthy."""
    port = free_port()
    log = tmp_path_factory.mktemp("llama") / "server.log"
    command = [SERVER, "-m", MODEL, "--host", "127.0.0.1", "--port", str(port), "-c", "8192",
               "-t", "2", "--metrics", "--jinja"]
    if TEMPLATE:
        command += ["--chat-template-file", TEMPLATE]
    url = f"http://127.0.0.1:{port}"
    with log.open("wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession() as session:
            async def healthy() -> bool:
                if proc.poll() is not None:
                    raise RuntimeError(f"llama.cpp's server exited:\n{log.read_text()}")
                try:
                    async with session.get(f"{url}/health") as resp:
                        return resp.status == 200
                except aiohttp.ClientError:
                    return False
            await eventually_async(healthy, timeout=300)  # loading takes ~20 s on 2 cores
        yield url
    finally:
        proc.terminate()
        proc.wait(30)


async def until_next_minute() -> None:
    """Until the wall clock shows the next minute: the minute the model is told changes, the
    event the old prompt lost its cache to. (The clock is the thing waited for here.)"""
    await asyncio.sleep(60.5 - time.time() % 60)


@pytest.mark.timeout(1800)
async def test_messages_after_the_first_reuse_the_cached_head(
        llama: str, tmp_path: Path) -> None:
    config = {
        "llm": {"endpoints": [{"name": "llama", "base_url": f"{llama}/v1",
                               "timeout_seconds": 600}],
                "model": Path(MODEL).name, "context_tokens": 8192, "max_tokens": 64,
                "retries": 0},
        "web": {"token": TOKEN},
        "heartbeat": {"enabled": False},
    }
    rows: list[tuple[int, int, int]] = []  # (minute, tokens read anew, tokens reused)
    async with Daemon(tmp_path, config) as daemon, aiohttp.ClientSession() as session:
        thread = None
        for i in range(MESSAGES):
            if i == 1:
                await until_next_minute()
            # A tab connected per message, as after a reload: a socket left unread while the
            # clock turns misses the daemon's pings and is closed.
            chat = await daemon.connect(thread)
            thread = chat.thread_id
            try:
                read, cached = await prompt_counters(session, llama)
                minute = int(time.time() // 60)
                answer = await chat.ask(QUESTIONS[i % len(QUESTIONS)], timeout=600)
                assert answer["role"] == "assistant" and answer["text"].strip(), answer
                read_after, cached_after = await prompt_counters(session, llama)
            finally:
                await chat.close()
            rows.append((minute, read_after - read, cached_after - cached))

    head = rows[0][1] + rows[0][2]  # the whole first prompt: base prompt, tools, memory files
    assert head > 1000, rows  # the tool schemas alone are ~1,900 tokens
    assert len({minute for minute, _, _ in rows}) >= 2, rows  # a new minute was crossed
    for number, (_, read, cached) in enumerate(rows[1:], start=2):
        # Each later message reads anew only its own tail (the time, the last exchange, the
        # question): never the head again, which the server keeps from the message before.
        assert cached >= head - 100, (number, rows)
        assert read < head / 4, (number, rows)
