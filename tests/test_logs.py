"""Logging: logs/ganglion.log rotates at local midnight, by the clock, not on request."""

from __future__ import annotations

import json
import logging
import logging.handlers
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest
from conftest import LLM_KEY, WEB_TOKEN, daemon_config
from daemon import Daemon
from fake_llm import FakeLLM, Reply

from ganglion.logs import SecretMask, file_handler, setup_logging


@pytest.fixture
def rotating_handler(tmp_path: Path) -> Iterator[logging.handlers.TimedRotatingFileHandler]:
    """``setup_logging`` into tmp_path; pytest's own handlers and levels come back after."""
    root = logging.getLogger()
    saved_handlers, saved_level = list(root.handlers), root.level
    saved_levels = {name: lg.level for name, lg in logging.root.manager.loggerDict.items()
                    if isinstance(lg, logging.Logger)}
    setup_logging(tmp_path / "logs", "INFO", SecretMask())
    handler = next(h for h in root.handlers
                   if isinstance(h, logging.handlers.TimedRotatingFileHandler))
    try:
        yield handler
    finally:
        for h in list(root.handlers):
            root.removeHandler(h)
            h.close()
        for h in saved_handlers:
            root.addHandler(h)
        root.setLevel(saved_level)
        for name, level in saved_levels.items():
            logging.getLogger(name).setLevel(level)


def test_the_log_rotates_at_local_midnight(
    tmp_path: Path, rotating_handler: logging.handlers.TimedRotatingFileHandler,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    today = date.today()
    midnight = datetime.combine(today + timedelta(days=1), datetime.min.time())
    # Rotation is set for the coming local midnight (not 24 h after start, not UTC).
    assert datetime.fromtimestamp(rotating_handler.rolloverAt) == midnight
    log = logging.getLogger("ganglion.test")
    rollover_at = rotating_handler.rolloverAt
    logs = tmp_path / "logs"

    log.warning("in the evening")
    monkeypatch.setattr(time, "time", lambda: rollover_at - 1.0)  # the clock, a second early
    log.warning("a second before midnight")
    monkeypatch.undo()
    assert sorted(p.name for p in logs.iterdir()) == ["ganglion.log"]

    monkeypatch.setattr(time, "time", lambda: rollover_at + 1.0)  # and just past midnight
    log.warning("just after midnight")
    monkeypatch.undo()

    rotated = logs / f"ganglion.log.{today:%Y-%m-%d}"
    assert sorted(p.name for p in logs.iterdir()) == ["ganglion.log", rotated.name]
    yesterday = rotated.read_text()
    assert "in the evening" in yesterday and "a second before midnight" in yesterday
    assert "just after midnight" not in yesterday
    current = (logs / "ganglion.log").read_text()
    assert "just after midnight" in current and "evening" not in current
    assert oct((logs / "ganglion.log").stat().st_mode & 0o777) == "0o600"
    # The next rotation is the midnight after.
    assert datetime.fromtimestamp(rotating_handler.rolloverAt) == midnight + timedelta(days=1)
    assert rotating_handler.backupCount == 14  # two weeks of old logs are kept


async def test_json_logs_are_one_masked_object_a_line(tmp_path: Path, fake_llm: FakeLLM) -> None:
    # The real daemon with logging.format json, at DEBUG with the LLM traffic logged: a
    # message carrying both secrets goes through a turn, and every line of the console and
    # of the log file is a JSON object in which neither secret appears.
    fake_llm.script(Reply(text="noted"))
    config = daemon_config(fake_llm, logging={"format": "json", "level": "DEBUG",
                                              "debug_llm": True})
    async with Daemon(tmp_path, config) as daemon:
        chat = await daemon.connect()
        reply = await chat.ask(f"my keys are {LLM_KEY} and {WEB_TOKEN}")
        assert reply["text"] == "noted"
        await chat.close()
        assert await daemon.stop() == 0
    for source in (tmp_path / "logs" / "ganglion.log", daemon.output):
        text = source.read_text()
        assert LLM_KEY not in text and WEB_TOKEN not in text
        records = [json.loads(line) for line in text.splitlines()]
        assert records and all(set(r) >= {"time", "level", "logger", "message"}
                               for r in records), source
        datetime.fromisoformat(records[0]["time"])  # ISO 8601, with the local offset
        # The secrets had their chance: the raw request was logged, masked.
        assert any("my keys are ***" in r["message"] for r in records), source
        # The turn's lines carry its thread (those logged before the reply: the daemon is
        # stopped once the reply is read, and a later line may not be written by then).
        mine = [r for r in records if r.get("thread_id") == chat.thread_id]
        assert any(r["message"].startswith(f"[{chat.thread_id}] ") for r in mine), source


def test_a_json_log_line_carries_the_masked_exception(tmp_path: Path) -> None:
    mask = SecretMask(["hunter2-secret"])
    handler = file_handler(tmp_path, mask, "json")
    log = logging.Logger("ganglion.test")
    log.addHandler(handler)
    try:
        raise ValueError("bad password hunter2-secret")
    except ValueError:
        log.exception("[web_%s] failed with hunter2-secret", "ab" * 16)
    handler.close()
    (record,) = [json.loads(line) for line in (tmp_path / "ganglion.log").read_text()
                 .splitlines()]
    assert record["level"] == "ERROR" and record["thread_id"] == "web_" + "ab" * 16
    assert record["message"].endswith("failed with ***")
    assert "ValueError: bad password ***" in record["exception"]
    assert "hunter2" not in json.dumps(record)


def test_a_json_log_line_names_a_matrix_room_or_thread(tmp_path: Path) -> None:
    handler = file_handler(tmp_path, SecretMask(), "json")
    log = logging.Logger("ganglion.test")
    log.addHandler(handler)
    for thread in ("!room:example.org", "!room:example.org/$root:example.org"):
        log.info("[%s] event queued", thread)
    log.info("[not a thread] plain")
    handler.close()
    records = [json.loads(line) for line in (tmp_path / "ganglion.log").read_text()
               .splitlines()]
    assert [r.get("thread_id") for r in records] == [
        "!room:example.org", "!room:example.org/$root:example.org", None]
