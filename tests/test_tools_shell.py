"""The shell tool with real processes: time limit over the whole group, output cap, scrubbed
environment, working directory, Stop."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import LLM_KEY, WEB_TOKEN, AppFactory, connect, eventually
from fake_llm import FakeLLM, Reply

from ganglion.app import App
from ganglion.tools.shell import DEFAULT_PATH, Shell

SHELL_ON = {"tools": {"policy": {"shell": "on"}}}


async def shell(app: App, fake_llm: FakeLLM, command: str, timeout: float = 20) -> str:
    """One turn in which the model runs ``command``; the result it saw."""
    fake_llm.script(Reply(tool_calls=[("shell", {"command": command})]), Reply(text="done"))
    chat = await connect(app)
    assert (await chat.ask("run it", timeout=timeout))["text"] == "done"
    await chat.close()
    results = [m["content"] for m in fake_llm.requests[-1]["messages"] if m["role"] == "tool"]
    return results[-1]


def is_gone(pid: int) -> bool:
    """Dead, or a zombie waiting for a reaper (no longer running either way)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state in ("Z", "X")


async def test_runs_in_the_scripts_folder(app_factory: AppFactory, fake_llm: FakeLLM) -> None:
    app = await app_factory(SHELL_ON)
    (app.data_dir / "scripts" / "hello.sh").write_text('echo "hello $1"; exit 3\n')
    result = await shell(app, fake_llm, "pwd; sh hello.sh world; cat < /dev/stdin; echo end")
    assert "exit status 0" in result
    assert str(app.data_dir / "scripts") in result
    assert "hello world" in result and "end" in result
    assert "exit status 3" in await shell(app, fake_llm, "sh hello.sh x")
    assert "exit status 127" in await shell(app, fake_llm, "no-such-command-here")


async def test_time_limit_kills_the_whole_group(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory({"tools": {"policy": {"shell": "on"}, "shell_timeout_seconds": 1}})
    started = time.monotonic()
    result = await shell(
        app, fake_llm, 'sleep 3301 & echo "grandchild $!"; sh -c "sleep 3317" & wait')
    assert time.monotonic() - started < 8
    assert "killed after the 1 s time limit" in result
    pid = int(re.search(r"grandchild (\d+)", result).group(1))  # type: ignore[union-attr]
    assert is_gone(pid)
    assert not any("sleep 3317" in _cmdline(p) for p in _processes())


async def test_a_process_ignoring_sigterm_is_killed(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory({"tools": {"policy": {"shell": "on"}, "shell_timeout_seconds": 1}})
    result = await shell(app, fake_llm, "trap '' TERM; sleep 302 & echo \"child $!\"; wait")
    assert "killed after the 1 s time limit" in result
    pid = int(re.search(r"child (\d+)", result).group(1))  # type: ignore[union-attr]
    assert is_gone(pid)


async def test_background_processes_end_with_the_command(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory(SHELL_ON)
    started = time.monotonic()
    result = await shell(app, fake_llm, 'sleep 303 > /dev/null 2>&1 & echo "bg $!"')
    assert "exit status 0" in result and time.monotonic() - started < 5
    pid = int(re.search(r"bg (\d+)", result).group(1))  # type: ignore[union-attr]
    assert is_gone(pid)


async def test_output_is_capped_head_and_tail(app_factory: AppFactory, fake_llm: FakeLLM) -> None:
    app = await app_factory({"tools": {"policy": {"shell": "on"},
                                       "shell_max_output_bytes": 1000}})
    result = await shell(app, fake_llm, "seq 1 100000; echo LAST >&2")
    assert "exit status 0" in result
    assert "exit status 0\n1\n2\n3\n" in result and "\n99999\n100000\nLAST\n" in result
    assert "\n50000\n" not in result
    assert "bytes of output left out" in result
    assert len(result) < 1000 + 400


async def test_the_environment_holds_no_secrets(
    app_factory: AppFactory, fake_llm: FakeLLM, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-from-env-0b7d3c")
    monkeypatch.setenv("GANGLION_MATRIX_TOKEN", "syt_matrix_token_77aa")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "aws-secret-1f2e")
    monkeypatch.setenv("FRIENDLY", "visible-value")
    monkeypatch.setenv("LEAKY", f"prefix-{LLM_KEY}")
    app = await app_factory({"tools": {"policy": {"shell": "on"},
                                       "shell_env": ["FRIENDLY", "LEAKY"]}})
    result = await shell(app, fake_llm, "env")
    assert "PATH=" in result and "FRIENDLY=visible-value" in result
    for secret in (LLM_KEY, WEB_TOKEN, "sk-from-env", "syt_matrix", "aws-secret", "LEAKY",
                   "OPENAI_API_KEY", "GANGLION"):
        assert secret not in result


async def test_stop_kills_a_running_command(app_factory: AppFactory, fake_llm: FakeLLM) -> None:
    app = await app_factory(SHELL_ON)
    marker = app.data_dir / "scripts" / "pid"
    fake_llm.script(Reply(tool_calls=[("shell", {"command": "echo $$ > pid; exec sleep 304"})]))
    chat = await connect(app)
    await chat.send("run it")
    await eventually(lambda: marker.exists() and bool(marker.read_text().strip()), 10)
    pid = int(marker.read_text())
    await chat.send_raw({"type": "stop"})
    reply = await chat.reply()
    while reply["text"] != "Stopped.":
        reply = await chat.reply()
    await eventually(lambda: is_gone(pid))
    await chat.close()


def _processes() -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit()]


def _cmdline(pid: int) -> str:
    try:
        raw: Any = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return str(raw.replace(b"\0", b" ").decode(errors="replace")) if not is_gone(pid) else ""


async def test_approval_shows_invisible_characters_escaped_and_runs_the_command_as_sent(
    app_factory: AppFactory, fake_llm: FakeLLM, caplog: pytest.LogCaptureFixture
) -> None:
    """A right-to-left override, zero-width space, escape or carriage return would make the
    command the approver reads differ from the one that runs."""
    app = await app_factory()  # shell is ask
    command = "echo safe > 'x\u202etxt.hs'\u200b; printf '\x1b[2K\r'; echo\u00a0done"
    fake_llm.script(Reply(tool_calls=[("shell", {"command": command})]), Reply(text="ran"))
    chat = await connect(app)
    await chat.send("run it")
    while (ask := await chat.next_event(10)).get("type") != "message" or \
            "Approval needed" not in ask["text"]:
        pass
    text = ask["text"]
    assert "5 invisible characters" in text
    assert ("echo safe > 'x\\u202etxt.hs'\\u200b; printf '\\u001b[2K\\u000d'; echo\\u00a0done"
            in text)
    assert not any(ch in text for ch in "\u202e\u200b\x1b\r\u00a0")
    assert (await chat.send("/approve"))["type"] == "ack"
    while (event := await chat.next_event(10)).get("role") != "assistant":
        pass
    assert event["text"] == "ran"
    assert (app.data_dir / "scripts" / "x\u202etxt.hs\u200b").read_text() == "safe\n"  # as sent
    transcript = [r.content for r in await app.history.transcript(chat.thread_id)]
    assert not any("\u202e" in c for c in transcript if "Approval needed" in c)
    # The log line of the call reads as what ran, too.
    calls = [r.getMessage() for r in caplog.records if "tool shell(" in r.getMessage()]
    assert calls and all("\\u202e" in c and "\u202e" not in c for c in calls), calls
    await chat.close()


async def test_an_ordinary_command_is_asked_without_a_warning(
    app_factory: AppFactory, fake_llm: FakeLLM
) -> None:
    app = await app_factory()
    command = "printf 'a\\tb\\n' | grep -c 'ä'\necho 'naïve café'"
    fake_llm.script(Reply(tool_calls=[("shell", {"command": command})]), Reply(text="ok"))
    chat = await connect(app)
    await chat.send("run it")
    while (ask := await chat.next_event(10)).get("type") != "message" or \
            "Approval needed" not in ask["text"]:
        pass
    assert command in ask["text"] and "invisible" not in ask["text"]
    assert (await chat.send("/deny"))["type"] == "ack"
    await chat.close()


async def test_a_stop_while_the_command_starts_ends_the_call_and_the_command(
    tmp_path: Path,
) -> None:
    """A Stop that lands while asyncio connects the new process's pipes, once the command has
    started a child: the call ends at once and the whole group is killed. (asyncio killed only
    the shell there and then waited for the pipe to close, which the child held open: the
    Stop waited for the command to end by itself; CPython gh-103847.)"""
    tool = Shell(tmp_path, {"PATH": DEFAULT_PATH}, timeout_seconds=600, max_output_bytes=1000)
    sleep = f"sleep 306.{os.getpid()}"  # this run's own (other runs may be under way)
    command = f"{sleep}; true"  # not the shell's last command: it forks the sleep
    call = asyncio.create_task(tool.shell(command))
    try:
        # Pass by pass of the loop (no wait for time) until the shell runs: the call is then
        # inside the process start, its pipes being connected on a later pass...
        while not any(_cmdline(p).endswith(command + " ") for p in _processes()):
            await asyncio.sleep(0)
            assert not call.done()
        # ...and held there, without yielding to the loop, until the shell has started its
        # child, the holder of the pipe.
        _until(lambda: any(sleep in _cmdline(p) for p in _processes()))
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            async with asyncio.timeout(10):  # a bound on the hang, not a synchronisation
                await call
        await eventually(lambda: not any(sleep in _cmdline(p) for p in _processes()))
    finally:  # whatever failed: no sleep left behind
        for pid in _processes():
            if sleep in _cmdline(pid):
                os.kill(pid, 9)


def _until(condition: Callable[[], bool], timeout: float = 10) -> None:
    """``eventually`` without yielding to the event loop: for a test that must keep a task
    where it is while another process gets somewhere."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        time.sleep(0.01)
