"""Logging: console and logs/ganglion.log (rotated daily), with every known secret masked."""

from __future__ import annotations

import io
import json
import logging
import logging.handlers
import os
import re
import sys
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
_THREAD = re.compile(r"\A\[(web_[0-9a-f]+|![^\]\s]+)\] ")
"""A message about one conversation starts with its thread id in brackets: a tab's
(``web_<hex>``), a Matrix room's or a thread's (``!room:server``, ``!room:server/$root``)."""


class JsonFormatter(logging.Formatter):
    """One JSON object a line, for log shippers: ``time`` (ISO 8601, local offset),
    ``level``, ``logger``, ``message``, ``thread_id`` when the message names one, and
    ``exception`` when there is one. The secret mask has run before (a handler's filter):
    the message and the exception text are the masked ones."""

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        out: dict[str, str] = {
            "time": self.formatTime(record),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        if (thread := _THREAD.match(message)) is not None:
            out["thread_id"] = thread.group(1)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            out["exception"] = record.exc_text
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False)

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        return datetime.fromtimestamp(record.created).astimezone().isoformat(
            timespec="milliseconds")


def formatter(style: str) -> logging.Formatter:
    """``logging.format``: ``text`` (a line for people) or ``json`` (a line for machines)."""
    return JsonFormatter() if style == "json" else logging.Formatter(FORMAT)


class SecretMask(logging.Filter):
    """Replaces secret values anywhere in a formatted record by ``***``."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self._secrets: set[str] = set()
        self.add(*secrets)

    def add(self, *secrets: str) -> None:
        self._secrets.update(s for s in secrets if s and len(s) >= 4)

    def masked(self, text: str) -> str:
        """``text`` with every secret replaced by ``***`` (for what /status shows)."""
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._secrets:
            return True
        text = record.getMessage()
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        masked = text
        exc_text = record.exc_text or ""
        for secret in self._secrets:
            masked = masked.replace(secret, "***")
            exc_text = exc_text.replace(secret, "***")
        if masked != text:
            record.msg, record.args = masked, None
        if record.exc_text:
            record.exc_text = exc_text
        return True


class PrivateRotatingFileHandler(logging.handlers.TimedRotatingFileHandler):
    """Daily rotation; every log file it opens, the first and each new day's, is owner-only."""

    def _open(self) -> io.TextIOWrapper:
        os.close(os.open(self.baseFilename, os.O_CREAT | os.O_WRONLY, 0o600))
        os.chmod(self.baseFilename, 0o600)
        return super()._open()


NOISY = ("aiosqlite", "httpx", "httpcore", "httpx2", "httpcore2", "openai", "asyncio", "nio",
         "peewee", "apscheduler", "markdown_it")
"""Libraries that are loud at DEBUG; our own --debug is about our traffic. (The openai
package talks through httpx2/httpcore2; markdown_it logs every rule it tries.)"""


def file_handler(log_dir: Path, mask: logging.Filter,
                 style: str = "text") -> PrivateRotatingFileHandler:
    """``log_dir/ganglion.log``, rotated daily, owner-only, behind ``mask``."""
    log_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    handler = PrivateRotatingFileHandler(
        log_dir / "ganglion.log", when="midnight", backupCount=14, encoding="utf-8"
    )
    handler.setFormatter(formatter(style))
    handler.addFilter(mask)
    return handler


def set_levels(level: str) -> None:
    """The root logger at ``level``; libraries no chattier than INFO, some quieter."""
    logging.getLogger().setLevel(level)
    for noisy in NOISY:
        logging.getLogger(noisy).setLevel(max(logging.INFO, logging.getLevelName(level)))
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    # nio logs every room event at INFO; its warnings (undecryptable events) are what matter.
    logging.getLogger("nio").setLevel(logging.WARNING)


def setup_logging(log_dir: Path, level: str, mask: SecretMask, style: str = "text") -> None:
    """Console + daily-rotated file, both behind the same secret mask, both in ``style``."""
    console = logging.StreamHandler(sys.stderr)
    console.setFormatter(formatter(style))
    console.addFilter(mask)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(console)
    root.addHandler(file_handler(log_dir, mask, style))
    set_levels(level)
