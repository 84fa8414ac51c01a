"""MCP servers under the real daemon (tests/daemon.py): SIGTERM ends a stdio server's whole
process group within the stop budget; a SIGKILL during an MCP call is resumed without
making the call twice."""

from __future__ import annotations

import contextlib
import os
import signal
from pathlib import Path

import pytest
from conftest import daemon_config, eventually, eventually_async
from daemon import Daemon
from fake_llm import FakeLLM, Reply
from mcp_helpers import START_SECONDS, calls, is_gone, mcp_config, stdio_server
from wsclient import ChatClient

from ganglion.app import STOP_SECONDS


async def wait_connected(chat: ChatClient, tool: str) -> None:
    async def listed() -> bool:
        return f"`{tool}`: on, MCP server" in (await chat.ask("/tools"))["text"]
    await eventually_async(listed, timeout=START_SECONDS)


def kill_group(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


async def test_sigterm_ends_the_servers_whole_group_within_the_stop_budget(
    tmp_path: Path, fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    log, pids_file = tmp_path / "calls.jsonl", tmp_path / "spawned"
    monkeypatch.setenv("MCP_CALL_LOG", str(log))
    config = daemon_config(fake_llm, **mcp_config({"t": stdio_server()}, {"t__*": "on"}))
    async with Daemon(tmp_path, config) as d:
        chat = await d.connect()
        await wait_connected(chat, "t__spawn")
        fake_llm.script(Reply(tool_calls=[("t__spawn", {"pid_file": str(pids_file)})]),
                        Reply(text="spawned"))
        assert (await chat.ask("start something", timeout=30))["text"] == "spawned"
        server, child = (int(p) for p in pids_file.read_text().split())
        try:
            assert not is_gone(server) and not is_gone(child)
            assert os.getpgid(child) == server  # the server leads its group, the child in it
            await chat.close()
            assert await d.stop(timeout=STOP_SECONDS + 1) == 0
            # The daemon has exited: neither the server nor what it left behind runs on.
            await eventually(lambda: is_gone(server) and is_gone(child), timeout=1)
        finally:
            kill_group(server)


async def test_a_sigkill_during_a_call_resumes_without_calling_again(
    tmp_path: Path, fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = tmp_path / "calls.jsonl"
    monkeypatch.setenv("MCP_CALL_LOG", str(log))
    config = daemon_config(fake_llm, **mcp_config({"t": stdio_server()}, {"t__*": "on"}))
    d = Daemon(tmp_path, config)
    d.start()
    try:
        await d.wait_ready()
        chat = await d.connect()
        await wait_connected(chat, "t__hang")
        fake_llm.script(Reply(tool_calls=[("t__hang", {})]), Reply(text="resumed"))
        await chat.send("do the slow thing")
        await eventually(lambda: [c["tool"] for c in calls(log)] == ["hang"],
                         timeout=START_SECONDS)
        d.kill()  # mid-call: no result was kept
        d.start()
        await d.wait_ready()
        chat = await d.connect(chat.thread_id)
        await fake_llm.wait_until(lambda: len(fake_llm.requests) >= 2)
        results = [m["content"] for m in fake_llm.requests[-1]["messages"]
                   if m["role"] == "tool"]
        assert len(results) == 1 and results[0].startswith("error: this call was cut off")
        await wait_connected(chat, "t__hang")  # the server is back, and was not asked again
        assert [c["tool"] for c in calls(log)] == ["hang"]
        await chat.close()
        assert await d.stop() == 0
    finally:
        d.kill()
        for pid in {c["pid"] for c in calls(log)}:
            kill_group(pid)
