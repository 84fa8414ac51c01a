"""Logging: logs/ganglion.log rotates at local midnight, by the clock, not on request."""

from __future__ import annotations

import logging
import logging.handlers
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import pytest

from ganglion.logs import SecretMask, setup_logging


@pytest.fixture
def file_handler(tmp_path: Path) -> Iterator[logging.handlers.TimedRotatingFileHandler]:
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
    tmp_path: Path, file_handler: logging.handlers.TimedRotatingFileHandler,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    today = date.today()
    midnight = datetime.combine(today + timedelta(days=1), datetime.min.time())
    # Rotation is set for the coming local midnight (not 24 h after start, not UTC).
    assert datetime.fromtimestamp(file_handler.rolloverAt) == midnight
    log = logging.getLogger("ganglion.test")
    rollover_at = file_handler.rolloverAt
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
    assert datetime.fromtimestamp(file_handler.rolloverAt) == midnight + timedelta(days=1)
    assert file_handler.backupCount == 14  # two weeks of old logs are kept
