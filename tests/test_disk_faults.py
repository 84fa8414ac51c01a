"""The disk refusing writes for real: the daemon's data folder on a small tmpfs of its own.

The real daemon (tests/daemon.py) runs inside a private mount namespace (util-linux
``unshare -m --propagation private``, kept alive by a holder process) where a 4 MiB tmpfs is
mounted over its data folder; the test reaches into that namespace with ``nsenter -t PID -m``
to fill the tmpfs (a full disk: SQLite's SQLITE_FULL on every write) and to free it again, or,
while the daemon is stopped, to remount it read-only. Logs and console output stay on the real
disk. Needs root; outside CI the tests skip when not root or util-linux's tools are missing,
in CI (CI=true) they must run.

Why no read-only remount under a running daemon: Linux refuses ``mount -o remount,ro`` with
EBUSY while any file on the filesystem is open for writing, and SQLite holds its database,
WAL and shared-memory files open for writing as long as the daemon runs (asserted below, so
this note is checked). A read-only bind mount (``mount -o remount,bind,ro``) is refused the
same way while files are open for writing through it; one laid over the folder after the
daemon opened its files is allowed, and refuses every file opened from then on (EROFS: the
memory files' atomic writes, the reminders mirror), but SQLite's descriptors, opened before,
go on writing through the mount below. That partial fault is tested here for real. A
filesystem the kernel itself forces read-only after an I/O error (ext4
``errors=remount-ro``) stays read-only until it is checked, so nothing could recover by
itself there. So the database refusing writes mid-run (SQLITE_READONLY) is simulated with
``PRAGMA query_only`` in tests/test_faults.py; here a read-only data folder is met at start.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import pytest_asyncio
from conftest import daemon_config
from daemon import Daemon
from fake_llm import FakeLLM, Reply
from mount_namespace import Namespace, mounted_namespace
from wsclient import ChatClient


@pytest.fixture
def namespace(tmp_path: Path) -> Iterator[Namespace]:
    with mounted_namespace(tmp_path / "data") as ns:
        yield ns


@pytest_asyncio.fixture
async def daemon(
    namespace: Namespace, fake_llm: FakeLLM, tmp_path: Path
) -> AsyncIterator[Daemon]:
    """The daemon with its data folder on the namespace's tmpfs (logs on the real disk), ready;
    killed after the test."""
    async with Daemon(tmp_path, daemon_config(fake_llm), prefix=namespace.prefix(tmp_path)) as d:
        yield d


@pytest_asyncio.fixture
async def chat(daemon: Daemon) -> AsyncIterator[ChatClient]:
    """A tab connected to ``daemon``; closed after the test."""
    tab = await daemon.connect()
    try:
        yield tab
    finally:
        await tab.close()


async def still_serving(d: Daemon) -> None:
    """The daemon is up: /healthz answers and a new socket logs in."""
    async with aiohttp.ClientSession() as session, session.get(f"{d.url}/healthz") as resp:
        assert resp.status == 200
    other = await d.connect()
    await other.close()


def rows(ns: Namespace, sql: str) -> list[list[Any]]:
    """Query the database in the namespace (SQLite resolves /proc/PID/root to the host's /)."""
    script = ("import json, sqlite3, sys; conn = sqlite3.connect(sys.argv[1], timeout=10);"
              " print(json.dumps(conn.execute(sys.argv[2]).fetchall()))")
    done = ns.run(sys.executable, "-c", script, str(ns.data / "conversation.db"), sql)
    result: list[list[Any]] = json.loads(done.stdout)
    return result


async def test_a_full_disk_refuses_a_message_clearly_and_takes_it_when_space_is_back(
    namespace: Namespace, daemon: Daemon, chat: ChatClient, fake_llm: FakeLLM, tmp_path: Path
) -> None:
    assert (await chat.ask("before", timeout=10))["text"] == "echo: before"
    # See the module docstring: a read-only remount is refused while SQLite writes here.
    busy = namespace.run("mount", "-o", "remount,ro", str(namespace.data), check=False)
    assert busy.returncode != 0 and "busy" in busy.stderr, busy

    namespace.fill()
    refused = await chat.send("while full", client_id="c1")
    assert refused["type"] == "error" and refused["code"] == "not_stored", refused
    assert "Could not store your message" in refused["message"]
    assert "send it again" in refused["message"]
    await still_serving(daemon)
    assert (await chat.send("still full", client_id="c2"))["code"] == "not_stored"
    assert len(fake_llm.requests) == 1  # nothing ran on a message that was not stored

    namespace.free()  # the fault clears; the tab resends what was not acknowledged
    assert (await chat.send("while full", client_id="c1"))["type"] == "ack"
    assert (await chat.reply(10))["text"] == "echo: while full"
    assert (await chat.ask("after", timeout=10))["text"] == "echo: after"
    inbox = rows(namespace, "SELECT text, status FROM inbox ORDER BY id")
    assert inbox == [["before", "done"], ["while full", "done"], ["after", "done"]]
    assert rows(namespace, "PRAGMA integrity_check") == [["ok"]]
    assert daemon.proc is not None and daemon.proc.poll() is None
    assert "database or disk is full" in (tmp_path / "logs" / "ganglion.log").read_text()


async def test_an_answer_the_full_disk_refuses_is_announced_then_sent_once_space_is_back(
    namespace: Namespace, daemon: Daemon, chat: ChatClient, fake_llm: FakeLLM
) -> None:
    thinking = asyncio.Event()
    fake_llm.script(Reply(text="worth keeping", held=thinking))
    assert (await chat.send("question"))["type"] == "ack"
    async with asyncio.timeout(10):
        await fake_llm.wait_until(lambda: fake_llm.in_flight == 1)
    namespace.fill()  # the disk fills up while the model is thinking
    thinking.set()  # and only then does it answer
    notice = await chat.reply(10)
    assert notice["role"] == "system", notice
    assert "could not store my answer" in notice["text"]
    assert "keep trying" in notice["text"]
    await still_serving(daemon)

    namespace.free()
    answer = await chat.reply(40)  # the worker's retry backs off to a few seconds
    assert answer["role"] == "assistant" and answer["text"] == "worth keeping"
    assert (await chat.ask("and now?", timeout=10))["text"] == "echo: and now?"
    stored = rows(namespace, "SELECT role, content FROM messages ORDER BY id")
    assert stored == [["user", "question"], ["assistant", "worth keeping"],
                      ["user", "and now?"], ["assistant", "echo: and now?"]]
    assert rows(namespace, "PRAGMA integrity_check") == [["ok"]]


async def test_a_read_only_data_folder_at_start_is_refused_clearly_then_starts_once_writable(
    namespace: Namespace, daemon: Daemon
) -> None:
    chat = await daemon.connect()
    assert (await chat.ask("kept", timeout=10))["text"] == "echo: kept"
    await chat.close()
    assert await daemon.stop(10) == 0, daemon.text()

    namespace.run("mount", "-o", "remount,ro", str(namespace.data))  # nothing open now
    daemon.start()
    assert await daemon.wait_exit(20) == 1
    assert "could not start: the file system is read-only; make paths.data_dir" in daemon.text()
    assert str(namespace.data) in daemon.text()  # names the folder to fix

    namespace.run("mount", "-o", "remount,rw", str(namespace.data))
    daemon.start()
    await daemon.wait_ready()
    chat = await daemon.connect(chat.thread_id)
    assert "echo: kept" in str(chat.ready)  # the conversation from before is still there
    assert (await chat.ask("again", timeout=10))["text"] == "echo: again"
    await chat.close()


async def test_a_read_only_bind_mount_mid_run_fails_a_memory_write_clearly_then_it_works(
    namespace: Namespace, daemon: Daemon, chat: ChatClient, fake_llm: FakeLLM
) -> None:
    data = str(namespace.data)

    async def remember(fact: str) -> str:
        fake_llm.script(
            Reply(tool_calls=[("memory_append", {"file": "MEMORIES.txt", "text": fact})]),
            Reply(text=f"about {fact}"))
        assert (await chat.ask(f"remember {fact}", timeout=10))["text"] == f"about {fact}"
        results = [m["content"] for m in fake_llm.requests[-1]["messages"]
                   if m["role"] == "tool"]
        return str(results[-1])

    assert (await chat.ask("before", timeout=10))["text"] == "echo: before"
    # Read-only from now on for whatever is opened anew (see the module docstring).
    namespace.run("mount", "--bind", data, data)
    namespace.run("mount", "-o", "remount,bind,ro", data)
    refused = await remember("tea")
    assert refused.startswith("error: memory_append failed"), refused
    assert "Read-only file system" in refused
    await still_serving(daemon)

    namespace.run("umount", data)  # the fault clears
    assert "Appended to MEMORIES.txt" in await remember("coffee")
    assert namespace.run("cat", f"{data}/MEMORIES.txt").stdout == "coffee\n"
    # None of MEMORIES.txt's temp files is left (the reminders mirror may be mid-write).
    leftovers = namespace.run("ls", "-A", data).stdout.split()
    assert not [n for n in leftovers
                if n.startswith(".MEMORIES.txt.") and n.endswith(".tmp")], leftovers
    assert daemon.proc is not None and daemon.proc.poll() is None
