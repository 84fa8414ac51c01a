"""`ganglion backup` while the daemon answers a burst, `ganglion restore` into a fresh folder:
the same history, reminders and memory files, and a daemon that answers from them; a copy
before every upgrade of the database, and a failed migration said plainly."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import LLM_KEY, WEB_TOKEN, daemon_config
from daemon import Daemon
from fake_llm import FakeLLM, Reply

from ganglion.storage.db import Database, MigrationFailed
from ganglion.storage.migrations import Migration

FIRST = 25
"""Conversations answered before the backup; as many again are in flight during it."""


def ganglion(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ganglion", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120)


def rows(db: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return [tuple(r) for r in conn.execute(sql)]
    finally:
        conn.close()


MESSAGES = "SELECT id, thread_id, role, content FROM messages ORDER BY id"
REMINDERS = "SELECT * FROM reminders ORDER BY id"


async def test_a_backup_during_a_burst_restores_into_a_daemon_that_answers_the_same(
        tmp_path: Path, fake_llm: FakeLLM) -> None:
    home, fresh = tmp_path / "home", tmp_path / "fresh"
    home.mkdir()
    fresh.mkdir()
    archive = tmp_path / "backup.tar.gz"
    fake_llm.script(Reply(tool_calls=[("set_reminder", {"text": "water the plants",
                                                        "in_minutes": 600})]),
                    Reply(text="reminder set"))
    async with Daemon(home, daemon_config(fake_llm)) as daemon:
        (home / "data" / "MEMORIES.txt").write_text("The user's cat is called Miso.\n")
        # A Matrix key store where the default store_path puts it: a SQLite file in WAL mode
        # with a row only in its log, as nio's store is while the daemon runs.
        (home / "data" / "matrix-store").mkdir()
        store = sqlite3.connect(home / "data" / "matrix-store" / "bot_DEVICE.db")
        store.execute("PRAGMA journal_mode = WAL")
        store.execute("CREATE TABLE accounts (account BLOB)")
        store.execute("INSERT INTO accounts VALUES (x'0102')")
        store.commit()
        chats = [await daemon.connect() for _ in range(2 * FIRST)]
        assert (await chats[0].ask("hello 0"))["text"] == "reminder set"
        await asyncio.gather(*(c.ask(f"hello {i}", timeout=60)
                               for i, c in enumerate(chats[1:FIRST], start=1)))
        gate = asyncio.Event()
        fake_llm.script(*(Reply(text="late answer", held=gate) for _ in range(FIRST)))
        for i, chat in enumerate(chats[FIRST:]):
            assert (await chat.send(f"late {i}"))["type"] == "ack"
        async with asyncio.timeout(30):
            await fake_llm.wait_until(lambda: fake_llm.in_flight > 0)  # turns in flight
        made = await asyncio.to_thread(ganglion, daemon.config_path, "backup", str(archive))
        assert made.returncode == 0, made.stderr
        store.close()
        assert fake_llm.in_flight > 0  # still in flight: the backup waited for none of them
        gate.set()
        late = await asyncio.gather(*(c.reply(timeout=60) for c in chats[FIRST:]))
        assert {a["text"] for a in late} == {"late answer"}
        for chat in chats:
            await chat.close()
    original = home / "data" / "conversation.db"

    # The archive: no secret in it, nor the web token's file.
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        config_text = tar.extractfile("config.yaml").read().decode()  # type: ignore[union-attr]
    assert "data/conversation.db" in names and "data/MEMORIES.txt" in names
    assert not any(n.endswith(("-wal", "-shm", "ganglion.pid")) for n in names)
    assert "data/matrix-store/bot_DEVICE.db" in names
    assert LLM_KEY not in config_text and WEB_TOKEN not in config_text
    assert "***removed from the backup***" in config_text

    config = daemon_config(fake_llm)
    (fresh / "config.yaml").write_text(yaml.safe_dump(config))
    restored = ganglion(fresh / "config.yaml", "restore", str(archive))
    assert restored.returncode == 0, restored.stderr
    copy = fresh / "data" / "conversation.db"
    before, after = rows(original, MESSAGES), rows(copy, MESSAGES)
    assert set(after) <= set(before)  # a snapshot of the original, row for row
    answered = [r for r in after if r[2] == "assistant" and r[3].startswith("echo: hello")]
    assert len(answered) == FIRST - 1  # every answer given before the backup (one: the tool)
    assert rows(copy, REMINDERS) == rows(original, REMINDERS) != []
    assert (fresh / "data" / "MEMORIES.txt").read_text() == "The user's cat is called Miso.\n"
    assert rows(fresh / "data" / "matrix-store" / "bot_DEVICE.db",
                "SELECT hex(account) FROM accounts") == [("0102",)]
    assert (fresh / "config.from-backup.yaml").read_text() == config_text

    # The restored daemon answers from the restored history and memory.
    fake_llm.requests.clear()
    async with Daemon(fresh, config) as daemon:
        chat = await daemon.connect(chats[1].thread_id)
        reply = await chat.ask("and now?", timeout=30)
        assert reply["text"] == "echo: and now?"
        request = next(r for r in fake_llm.requests if "and now?" in json.dumps(r))
        said = [m.get("content") for m in request["messages"]]
        assert "hello 1" in said and "echo: hello 1" in said
        assert any("Miso" in str(s) for s in said)
        await chat.close()


async def test_restore_refuses_a_running_daemon_a_used_folder_and_a_damaged_archive(
        tmp_path: Path, fake_llm: FakeLLM) -> None:
    archive = tmp_path / "backup.tar.gz"
    async with Daemon(tmp_path, daemon_config(fake_llm)) as daemon:
        await (await daemon.connect()).ask("hi")
        assert ganglion(daemon.config_path, "backup", str(archive)).returncode == 0
        running = ganglion(daemon.config_path, "restore", str(archive))
        assert running.returncode == 1 and "another Ganglion" in running.stderr
    used = ganglion(daemon.config_path, "restore", str(archive))
    assert used.returncode == 1 and "is not empty" in used.stderr

    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / "config.yaml").write_text(yaml.safe_dump(daemon_config(fake_llm)))
    damaged = tmp_path / "damaged.tar.gz"
    damaged.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    broken = ganglion(fresh / "config.yaml", "restore", str(damaged))
    assert broken.returncode == 1 and "nothing was restored" in broken.stderr, broken.stderr
    assert [p.name for p in (fresh / "data").iterdir()] == ["ganglion.pid"]
    assert not (fresh / "config.from-backup.yaml").exists()
    assert ganglion(fresh / "config.yaml", "restore", str(archive)).returncode == 0


async def test_with_secrets_keeps_the_config_and_the_web_token(
        tmp_path: Path, fake_llm: FakeLLM) -> None:
    async with Daemon(tmp_path, daemon_config(fake_llm)) as daemon:
        await (await daemon.connect()).ask("hi")
    (tmp_path / "data" / "web_token").write_text("a-generated-token\n")
    archive = tmp_path / "all.tar.gz"
    assert ganglion(daemon.config_path, "backup", "--with-secrets", str(archive)).returncode == 0
    with tarfile.open(archive) as tar:
        assert tar.extractfile("config.yaml").read().decode() == \
            daemon.config_path.read_text()  # type: ignore[union-attr]
        assert "data/web_token" in tar.getnames()
    assert oct(archive.stat().st_mode & 0o777) == "0o600"


FIRST_MIGRATION = Migration(1, "notes", "CREATE TABLE notes (text TEXT NOT NULL)")


async def test_an_upgrade_copies_the_database_first_and_a_failed_migration_says_where(
        tmp_path: Path) -> None:
    path = tmp_path / "data" / "conversation.db"
    db = await Database.open(path, [FIRST_MIGRATION])
    await db.write("INSERT INTO notes VALUES ('kept')")
    await db.close()
    assert not (tmp_path / "data" / "backups").exists()  # a new database: nothing to copy

    # Midway: the first statement runs, the second fails; the migration is rolled back.
    broken = Migration(2, "tags", "CREATE TABLE tags (name TEXT);\nINSERT INTO nowhere VALUES (1)")
    with pytest.raises(MigrationFailed) as failed:
        await Database.open(path, [FIRST_MIGRATION, broken])
    copy = failed.value.copy
    assert copy is not None and copy.parent == tmp_path / "data" / "backups"
    assert copy.name.startswith("conversation-") and copy.name.endswith("-before-0002.db")
    message = str(failed.value)
    assert "migration 0002_tags failed: no such table: nowhere" in message
    assert f"a copy from before the upgrade is at {copy}" in message
    assert rows(copy, "SELECT text FROM notes") == [("kept",)]
    assert rows(path, "SELECT number FROM migrations") == [(1,)]
    assert rows(path, "SELECT name FROM sqlite_schema WHERE name = 'tags'") == []
