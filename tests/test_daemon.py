"""The real daemon process: start with no config, SIGTERM/SIGINT, SIGKILL mid-turn, restart."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import re
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio
from conftest import WEB_TOKEN, daemon_config, eventually
from daemon import Daemon
from fake_llm import FakeLLM, Reply
from wsclient import ChatClient

from ganglion.cli import ALL_SIGNALS_COUNT, EXIT_AT_ONCE, EXIT_STUCK


@pytest_asyncio.fixture
async def daemon(tmp_path: Path, fake_llm: FakeLLM) -> AsyncIterator[Daemon]:
    """The daemon in ``tmp_path`` on the fake LLM, ready; killed after the test."""
    async with Daemon(tmp_path, daemon_config(fake_llm)) as d:
        yield d


def inbox_rows(data: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(data / "conversation.db") as conn:
        return list(conn.execute("SELECT text, status FROM inbox ORDER BY id"))


def assistant_rows(data: Path, thread: str) -> list[str]:
    with sqlite3.connect(data / "conversation.db") as conn:
        return [r[0] for r in conn.execute(
            "SELECT content FROM messages WHERE thread_id = ? AND role = 'assistant'", (thread,))]


def port_8080_in_use() -> bool:
    """Something listens on 127.0.0.1:8080 (bound the way aiohttp binds, SO_REUSEADDR)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", 8080))
        except OSError as err:
            if err.errno == errno.EADDRINUSE:
                return True
            raise
    return False


async def test_starts_with_no_config_at_all(tmp_path: Path) -> None:
    """`ganglion` in an empty folder: web UI on 127.0.0.1:8080 and a clear line about the LLM."""
    if port_8080_in_use():
        # Quick Start's two commands side by side: `uv run ganglion` holds the port.
        why = ("127.0.0.1:8080 is in use (a running `uv run ganglion`?), and this test starts "
               "the daemon with no config, which listens there")
        if os.environ.get("CI") == "true":
            pytest.fail(why)
        pytest.skip(why + "; stop it to run this test")
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANGLION_")}
    out = (tmp_path / "out.txt").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "ganglion"], cwd=tmp_path, env=env,
                            stdout=out, stderr=subprocess.STDOUT)
    try:
        async with aiohttp.ClientSession() as session:
            for _ in range(400):
                # The child, not whatever else took the port since: it must still run.
                assert proc.poll() is None, (tmp_path / "out.txt").read_text()
                with contextlib.suppress(aiohttp.ClientError):
                    async with session.get("http://127.0.0.1:8080/healthz") as resp:
                        if resp.status == 200:
                            break
                await asyncio.sleep(0.05)
            else:
                raise AssertionError((tmp_path / "out.txt").read_text())
        # Only one socket listens on a port: the child, alive and listening there, answered.
        await eventually(lambda: proc.poll() is not None or "web interface listening on "
                         "http://127.0.0.1:8080" in (tmp_path / "out.txt").read_text(), 15)
        assert proc.poll() is None, (tmp_path / "out.txt").read_text()
        token = (tmp_path / "data" / "web_token").read_text().strip()
        assert oct((tmp_path / "data" / "web_token").stat().st_mode & 0o777) == "0o600"
        await eventually(lambda: "LLM:" in (tmp_path / "out.txt").read_text() and
                         "NOT reachable" in (tmp_path / "out.txt").read_text(), 15)
        text = (tmp_path / "out.txt").read_text()
        # Not a terminal (a pipe, a file, a journal): where the token is, not the token.
        assert token not in text
        assert ("web UI at http://127.0.0.1:8080; open http://127.0.0.1:8080/#token=<the "
                f"token>, which is kept in {tmp_path / 'data' / 'web_token'}") in text, text
        assert "http://127.0.0.1:11434/v1" in text and "config.yaml" in text
        log = (tmp_path / "logs" / "ganglion.log").read_text()
        assert token not in log and "web UI at http://127.0.0.1:8080" in log

        chat = ChatClient("http://127.0.0.1:8080", token)
        await chat.connect()
        reply = await chat.ask("hello?", timeout=30)
        assert reply["role"] == "system"
        assert "language model" in reply["text"] and "connection refused" in reply["text"]
        await chat.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        code = proc.wait(5)
        out.close()
    assert code == 0, (tmp_path / "out.txt").read_text()


@pytest.mark.parametrize("first", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
async def test_a_signal_mid_turn_exits_fast_and_keeps_the_message(
    daemon: Daemon, tmp_path: Path, fake_llm: FakeLLM, first: signal.Signals
) -> None:
    """SIGTERM (a service manager) and SIGINT (Ctrl-C) as the first signal: the same stop."""
    fake_llm.script(Reply(hang=True))
    chat = await daemon.connect()
    assert (await chat.send("answer me after a restart"))["type"] == "ack"
    await eventually(lambda: len(fake_llm.requests) == 1, 10)
    started = time.monotonic()
    daemon.signal(first)
    assert await daemon.wait_exit(5) == 0
    assert time.monotonic() - started < 5
    assert f"{first.name} received: stopping" in daemon.text()
    await chat.close()
    assert inbox_rows(tmp_path / "data") == [("answer me after a restart", "pending")]

    daemon.start()  # the next start answers it, once
    await daemon.wait_ready()
    chat = await daemon.connect(chat.thread_id)
    reply = await chat.reply(timeout=15)
    assert reply["text"] == "echo: answer me after a restart"
    assert inbox_rows(tmp_path / "data") == [("answer me after a restart", "done")]
    await chat.close()


@contextlib.contextmanager
def write_locked(db: Path) -> Iterator[None]:
    """Another process holds SQLite's write lock (a backup, an open sqlite3 shell): each write
    of the daemon waits out its busy_timeout (5 s) in aiosqlite's thread, which no
    cancellation reaches, and closing the database waits behind it."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        yield
    finally:
        conn.close()


@contextlib.asynccontextmanager
async def stuck_in_a_write(d: Daemon) -> AsyncIterator[ChatClient]:
    """A connected tab whose message is being stored while ``write_locked`` holds the lock;
    the lock is let go, then the tab closed, on leaving."""
    chat = await d.connect()
    try:
        with write_locked(d.workdir / "data" / "conversation.db"):
            await chat.send_raw({"type": "send", "id": "c1", "text": "store me if you can"})
            # Time for the write to begin (nothing shows it: no line is logged, at any level,
            # before a message is stored, and the tab hears nothing until then). SIGTERM must
            # then come within 1 s of the write's start: the write gives up after its
            # busy_timeout (5 s), and the stop must reach its deadline (4 s) first. 0.5 s
            # leaves half a second on either side for a loaded machine.
            await asyncio.sleep(0.5)
            assert d.proc is not None and d.proc.poll() is None
            yield chat
    finally:
        await chat.close()


async def test_sigterm_exits_within_5_s_even_when_a_part_cannot_stop(
    daemon: Daemon, tmp_path: Path
) -> None:
    async with stuck_in_a_write(daemon):
        started = time.monotonic()
        daemon.signal(signal.SIGTERM)
        code = await daemon.wait_exit(10)
        took = time.monotonic() - started
    assert code == EXIT_STUCK, daemon.text()
    assert took < 5, (took, daemon.text())
    log = (tmp_path / "logs" / "ganglion.log").read_text()
    # Whatever waits for the database (the reminders' last read too) is named.
    assert "database did not stop within" in log
    assert re.search(r"stopped, but [a-z ,]*database did not stop in time; exiting anyway",
                     log), log


async def test_a_second_signal_exits_at_once_while_the_stop_waits(daemon: Daemon) -> None:
    """A person's second Ctrl-C: one that comes after the duplicate window (a signal to the
    whole group arrives twice within it) exits at once, status 130."""
    async with stuck_in_a_write(daemon):
        daemon.signal(signal.SIGTERM)
        await daemon.notified("STOPPING=1")
        # The daemon says when a further signal counts: DUPLICATE_SIGNAL_SECONDS after the
        # first, measured by its own clock, while the stop still waits for the database.
        await daemon.notified(ALL_SIGNALS_COUNT)
        assert daemon.proc is not None and daemon.proc.poll() is None
        daemon.signal(signal.SIGINT)
        code = await daemon.wait_exit(10)
    # The stop's own end would be status 1, at its deadline (STOP_SECONDS after SIGTERM).
    assert code == EXIT_AT_ONCE, daemon.text()
    assert "second SIGINT: exiting at once" in daemon.text()
    assert "exiting anyway" not in daemon.text()


async def test_sigkill_mid_turn_is_answered_exactly_once_after_restart(
    daemon: Daemon, tmp_path: Path, fake_llm: FakeLLM
) -> None:
    fake_llm.script(Reply(text="partial answer that never finishes", chunk_delay=5.0))
    chat = await daemon.connect()
    assert (await chat.send("survive a crash"))["type"] == "ack"
    await eventually(lambda: len(fake_llm.requests) == 1, 10)
    daemon.kill()  # SIGKILL: no cleanup at all
    await chat.close()

    daemon.start()
    await daemon.wait_ready()
    chat = await daemon.connect(chat.thread_id)
    reply = await chat.reply(timeout=15)
    assert reply["text"] == "echo: survive a crash"
    # Run again once: the start recovered it once, and its one run marked it answered.
    assert daemon.text().count("recovered 1 unanswered message(s)") == 1
    assert assistant_rows(tmp_path / "data", chat.thread_id) == ["echo: survive a crash"]
    assert inbox_rows(tmp_path / "data") == [("survive a crash", "done")]
    await chat.close()
    assert await daemon.stop() == 0

    daemon.start()  # and a third start does not answer it again
    await daemon.wait_ready()
    # The recovery, which would run it again, has had its chance once the start is over.
    await eventually(lambda: daemon.text().count("ready in") == 3, 10)
    assert daemon.text().count("recovered") == 1  # the second start's, above
    assert assistant_rows(tmp_path / "data", chat.thread_id) == ["echo: survive a crash"]
    with sqlite3.connect(tmp_path / "data" / "conversation.db") as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


async def test_runs_from_any_directory_with_config(tmp_path: Path, fake_llm: FakeLLM) -> None:
    """Relative paths in the config resolve next to the config file, not the cwd."""
    home = tmp_path / "home"
    home.mkdir()
    d = Daemon(home, daemon_config(fake_llm))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    d.workdir = elsewhere
    d.start()
    try:
        await d.wait_ready()
        assert (home / "data" / "conversation.db").exists()
        assert (home / "logs" / "ganglion.log").exists()
        assert not (elsewhere / "data").exists()
        assert oct((home / "data" / "conversation.db").stat().st_mode & 0o777) == "0o600"
    finally:
        d.kill()


async def test_a_second_daemon_on_a_port_in_use_exits_1_and_says_to_set_web_port(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    for name in ("first", "second"):
        (tmp_path / name).mkdir()
    first = Daemon(tmp_path / "first", daemon_config(fake_llm))
    second = Daemon(tmp_path / "second", {**daemon_config(fake_llm),
                                          "web": {"token": WEB_TOKEN, "port": first.port}})
    first.start()
    try:
        await first.wait_ready()
        second.start()
        assert await second.wait_exit(20) == 1, second.text()
        said = second.text()
        assert f"web: cannot listen on 127.0.0.1:{first.port}" in said, said
        assert "set web.port to a free port (or 0 for any)" in said
        assert "Traceback" not in said
        assert first.proc is not None and first.proc.poll() is None  # the first keeps serving
    finally:
        second.kill()
        first.kill()


async def test_a_second_daemon_on_the_same_data_folder_exits_1_naming_the_first(
    tmp_path: Path, fake_llm: FakeLLM
) -> None:
    """The data folder's lock (flock on data/ganglion.pid): the second daemon leaves before
    it opens the database or the web port; the kernel lets go when the first is SIGKILLed."""
    # No private files configured: the lock file stays private all the same.
    first = Daemon(tmp_path, daemon_config(fake_llm, tools={"private_files": []}))
    first.start()
    (tmp_path / "second").mkdir()  # its own config and log, the first one's data folder
    second = Daemon(tmp_path / "second", daemon_config(
        fake_llm, paths={"data_dir": str(tmp_path / "data"), "log_dir": "logs"}))
    try:
        await first.wait_ready()
        assert first.proc is not None
        second.start()
        assert await second.wait_exit(20) == 1, second.text()
        said = second.text()
        assert (f"another Ganglion (pid {first.proc.pid}) is running on the data folder "
                f"{tmp_path / 'data'}") in said, said
        assert "Traceback" not in said
        assert f"listening on http://127.0.0.1:{second.port}" not in said
        assert "ready in" not in said
        assert first.proc.poll() is None  # the first keeps answering
        fake_llm.script(Reply(tool_calls=[("read_file", {"path": "ganglion.pid"})]),
                        Reply(tool_calls=[("write_file", {"path": "ganglion.pid",
                                                          "content": "1"})]),
                        Reply(text="done"))
        chat = await first.connect()
        assert (await chat.ask("look at the lock", timeout=15))["text"] == "done"
        await chat.close()
        results = [m["content"] for m in fake_llm.requests[-1]["messages"]
                   if m["role"] == "tool"]
        assert len(results) == 2 and all("private to the daemon" in r for r in results), results
        assert (tmp_path / "data" / "ganglion.pid").read_text() == f"{first.proc.pid}\n"

        first.kill()  # SIGKILL: no clean-up, the pid stays in the file
        second.start()
        await second.wait_ready()
        assert second.proc is not None
        assert (tmp_path / "data" / "ganglion.pid").read_text() == f"{second.proc.pid}\n"
        assert await second.stop() == 0
    finally:
        second.kill()
        first.kill()


@pytest.mark.parametrize("bad", ["web:\n  port: eighty\n", "matrix:\n  enabeld: true\n"])
async def test_daemon_refuses_a_bad_config_with_status_2(tmp_path: Path, bad: str) -> None:
    (tmp_path / "config.yaml").write_text(bad)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GANGLION_")}
    result = subprocess.run([sys.executable, "-m", "ganglion"], cwd=tmp_path, env=env,
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert ("web.port" if "port" in bad else "matrix.enabeld") in result.stderr


@contextlib.asynccontextmanager
async def silent_listener() -> AsyncIterator[tuple[str, list[asyncio.StreamWriter]]]:
    """A TCP server that accepts and never answers (a homeserver behind a stuck proxy): its
    URL, and the connections it holds."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}", held
    finally:
        for writer in held:
            writer.close()
        server.close()


async def test_sigterm_during_start_up_stops_at_once(tmp_path: Path, fake_llm: FakeLLM) -> None:
    """Start-up waits up to 10 s for the Matrix session check; a signal does not wait for it."""
    async with silent_listener() as (homeserver, held):
        d = Daemon(tmp_path, daemon_config(fake_llm, matrix={
            "enabled": True, "homeserver": homeserver, "user_id": "@bot:localhost",
            "access_token": "syt_never_checked", "device_id": "NEVERCHECKED",
            "allowed_users": ["@owner:localhost"], "store_path": "data/matrix-store"}))
        d.start()
        try:
            await eventually(lambda: bool(held), 15)  # the session check waits on the homeserver
            assert d.proc is not None and d.proc.poll() is None, d.text()
            started = time.monotonic()
            d.signal(signal.SIGTERM)
            code = await d.wait_exit(15)
            took = time.monotonic() - started
        finally:
            d.kill()
    assert code == 0, d.text()
    assert took < 5, (took, d.text())
    assert "SIGTERM received: stopping" in d.text()
    assert "Traceback" not in d.text()
