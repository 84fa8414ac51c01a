"""``ganglion db copy``: SQLite to PostgreSQL and back, every row, verified by the counts,
the ids going on after the copied ones; a non-empty target refused. ``ganglion backup`` on
PostgreSQL says to use pg_dump instead of archiving the files without the database."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import yaml
from pg_cluster import PASSWORD, Cluster

from ganglion.messages import Inbound, Source, ThreadId
from ganglion.storage.backend import Backend
from ganglion.storage.catalog import Catalog
from ganglion.storage.connect import open_database
from ganglion.storage.copy import tables
from ganglion.storage.history import History, NewMessage
from ganglion.storage.inbox import Inbox
from ganglion.storage.reminders import NewReminder, ReminderStore
from ganglion.storage.search import Search
from ganglion.storage.usage import Payer, UsageLog

TID = ThreadId("web_" + "cd" * 16)


def ganglion(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"paths": {"data_dir": "data", "log_dir": "logs"}}))
    return subprocess.run([sys.executable, "-m", "ganglion", "--config", str(config), *args],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)


async def fill(db: Backend, tmp_path: Path) -> None:
    """A little of everything: a turn answered, one pending, a reminder, a model, usage."""
    inbox, history = Inbox(db), History(db)
    for n, text in enumerate(("parsnips in the cellar", "still waiting")):
        msg, _ = await inbox.add(Inbound(TID, text, "web", Source.WEB, f"c{n}"))
        if n == 0:
            await history.begin_turn(msg, text)
            await history.finish_turn(TID, msg.id, [NewMessage("assistant", "Keep them cool.",
                                                               deliver=True)])
    store = ReminderStore(db, tmp_path / "reminders.json", ZoneInfo("UTC"))
    await store.add_many([NewReminder(TID, "water the plants", time.time() + 3600)])
    await Catalog(db).set_endpoint_models("local", ["model-a", "model-b"])
    await Catalog(db).set_alias("fast", "model-a", "owner")
    await UsageLog(db).admit(Payer("web", "web", TID, "web"), window_start=0,
                             max_in_window=None, day_start=0, max_tokens_today=None)


async def everything(db: Backend) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for name in await tables(db):
        rows = await db.fetchall(f'SELECT * FROM "{name}"')
        out[name] = sorted((tuple(r) for r in rows), key=repr)
    return out


async def test_sqlite_to_postgres_and_back_keeps_every_row(
    tmp_path: Path, pg_cluster: Cluster
) -> None:
    data = tmp_path / "data"
    source = await open_database("sqlite:///conversation.db", data, "source")
    await fill(source, tmp_path)
    before = await everything(source)
    await source.close()
    url = pg_cluster.new_database()

    done = ganglion(tmp_path, "db", "copy", "--from", "sqlite:///conversation.db", "--to", url)
    assert done.returncode == 0, done.stderr
    assert "the counts match" in done.stdout and PASSWORD not in done.stdout + done.stderr
    assert "postgresql://ganglion:***@" in done.stdout

    pg = await open_database(url, data, "target")
    try:
        assert await everything(pg) == before
        # New rows take ids after the copied ones; search finds the copied history.
        msg, new = await Inbox(pg).add(Inbound(TID, "after the copy", "web", Source.WEB, "c9"))
        assert new and msg.id == 3
        assert [h.message_id for h in await Search(pg).search("parsnips")] == [1]
        assert await pg.instance_id() == dict(before)["instance"][0][0]
    finally:
        await pg.close()

    again = ganglion(tmp_path, "db", "copy", "--from", "sqlite:///conversation.db", "--to", url)
    assert again.returncode == 1
    assert "is not empty (" in again.stderr and "copy into a new, empty database" in again.stderr

    back = ganglion(tmp_path, "db", "copy", "--from", url, "--to", "sqlite:///back.db")
    assert back.returncode == 0, back.stderr
    copy = await open_database("sqlite:///back.db", data, "back")
    try:
        after = await everything(copy)
        assert {n: len(r) for n, r in after.items()} == {
            n: len(r) + (1 if n == "inbox" else 0) for n, r in before.items()}
        assert [h.message_id for h in await Search(copy).search("parsnips")] == [1]
    finally:
        await copy.close()


def test_backup_on_postgres_says_to_use_pg_dump(tmp_path: Path, pg_cluster: Cluster) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump({"paths": {"data_dir": "data", "log_dir": "logs"},
                                      "database": {"url": pg_cluster.url()}}))
    for args in (["backup", str(tmp_path / "b.tar.gz")], ["restore", str(tmp_path / "x")]):
        done = subprocess.run([sys.executable, "-m", "ganglion", "--config", str(config),
                               *args], capture_output=True, text=True, timeout=60)
        assert done.returncode == 1
        assert "the database is PostgreSQL" in done.stderr and "pg_dump" in done.stderr
        assert PASSWORD not in done.stderr
    assert not (tmp_path / "b.tar.gz").exists()


def test_doctor_checks_the_postgres_server(tmp_path: Path, pg_cluster: Cluster) -> None:
    config = tmp_path / "config.yaml"
    for url, ok, said in ((pg_cluster.new_database(), True, "PostgreSQL 1"),
                          (pg_cluster.url(password="wrong-Pw-77"), False, "refused the login")):
        config.write_text(yaml.safe_dump({"paths": {"data_dir": "data", "log_dir": "logs"},
                                          "database": {"url": url}}))
        done = subprocess.run([sys.executable, "-m", "ganglion", "doctor", "--json",
                               "--config", str(config)], capture_output=True, text=True,
                              timeout=120)
        [check] = [c for c in json.loads(done.stdout)["checks"] if c["name"] == "database"]
        assert check["ok"] is ok and said in check["detail"], check
        assert "no tables yet" in check["detail"] or not ok
        assert PASSWORD not in done.stdout and "wrong-Pw-77" not in done.stdout


def test_check_config_shows_the_database_url_without_its_password(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    url = "postgresql://ganglion:Hidden-pw-5521@db.example.org:5432/ganglion"
    config.write_text(yaml.safe_dump({"database": {"url": url}}))
    done = subprocess.run([sys.executable, "-m", "ganglion", "--config", str(config),
                           "check-config"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "postgresql://ganglion:***@db.example.org:5432/ganglion" in done.stdout
    assert "Hidden-pw-5521" not in done.stdout + done.stderr
    bad = url.replace("5432", "port")
    config.write_text(yaml.safe_dump({"database": {"url": bad}}))
    done = subprocess.run([sys.executable, "-m", "ganglion", "--config", str(config),
                           "check-config"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "database.url: Value error, the port must be a number" \
        in done.stderr, done.stderr
    assert "Hidden-pw-5521" not in done.stdout + done.stderr
