"""What /status answers and ``ganglion status`` prints: the daemon's health at a glance.

The App builds a ``StatusReport`` over its parts (``report``, served as JSON by the web
interface); the CLI fetches that JSON from the running daemon (``fetch``) and prints it for
a person (``text``). Nothing secret goes in: endpoint addresses lose their credentials and
failures are passed through the log's secret mask.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Protocol

from ganglion import __version__
from ganglion.bus import Bus
from ganglion.config_web import WebConfig
from ganglion.durations import duration_text
from ganglion.llm.endpoints import EndpointPool
from ganglion.storage.files import WEB_TOKEN, kept_web_token
from ganglion.storage.reminders import ReminderStore
from ganglion.storage.usage import UsageLog


class MatrixSync(Protocol):
    """What /status reads of the Matrix interface (not imported: nio is heavy)."""

    @property
    def sync_state(self) -> str: ...

    def sync_lag(self) -> float: ...


@dataclass(slots=True)
class StatusReport:
    """The parts /status reads; ``report`` reads them now."""

    bus: Bus
    endpoints: EndpointPool
    reminders: ReminderStore
    usage: UsageLog
    clock: Callable[[], datetime]
    """The local time (scheduler.timezone): "today" for the tokens starts at its midnight."""
    masked: Callable[[str], str]
    matrix: MatrixSync | None = None
    started: float = 0.0
    """When (monotonic) the daemon started."""
    database: str = ""
    """The database as it may be shown: a file's name, or a URL with its password masked."""

    async def report(self) -> dict[str, Any]:
        now = self.clock()
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0).timestamp()
        endpoints = []
        for ep in self.endpoints.endpoints():
            cooling = self.endpoints.cooling_left(ep)
            endpoints.append({
                "name": ep.name,
                "url": ep.config.shown_url,
                "state": "cooling" if cooling > 0 else "healthy",
                "cooling_seconds": round(cooling, 1),
                "last_failure": self.masked(ep.problem) if ep.problem else None,
                "models": len(ep.models) if ep.models is not None else None,
            })
        matrix = None
        if self.matrix is not None:
            matrix = {"state": self.matrix.sync_state,
                      "lag_seconds": round(self.matrix.sync_lag(), 1)}
        return {
            "version": __version__,
            "uptime_seconds": round(time.monotonic() - self.started, 1),
            "queue_depth": self.bus.depth(),
            "turns_in_flight": self.bus.in_flight(),
            "endpoints": endpoints,
            "matrix": matrix,
            "database": self.database,
            "reminders_pending": await self.reminders.count_active(),
            "tokens_today": await self.usage.all_tokens_since(midnight),
        }


class NoDaemon(Exception):
    """No daemon answered at the address; the message says what was tried."""


def daemon_address(config: WebConfig, data_dir: Path) -> tuple[str, str]:
    """Where the daemon of this config listens, and its token (web.token, else the one it
    keeps in data/web_token); NoDaemon when the config gives no way to ask it."""
    if not config.enabled:
        raise NoDaemon("web.enabled is false: /status is served by the web interface")
    if config.port == 0:
        raise NoDaemon("web.port is 0 (any free port): set a fixed port to ask the daemon")
    token = config.token or kept_web_token(data_dir)
    if not token:
        raise NoDaemon(f"no web token: web.token is empty and {data_dir / WEB_TOKEN} is "
                       "missing (the daemon writes it at its first start)")
    return config.local_url(config.port), token


def fetch(url: str, token: str, timeout: float = 5.0) -> dict[str, Any]:
    """GET ``url``/status with the token; raises NoDaemon when nothing (right) answers."""
    request = urllib.request.Request(f"{url}/status",
                                     headers={"Authorization": f"Bearer {token}"})
    # No proxy from the environment: the daemon is asked where the config says it listens.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(request, timeout=timeout) as resp:
            data: dict[str, Any] = json.loads(resp.read())
            return data
    except urllib.error.HTTPError as err:
        if err.code == 401:
            raise NoDaemon(f"the daemon at {url} refused the token (web.token, or "
                           "data/web_token of its data folder)") from None
        raise NoDaemon(f"{url}/status answered HTTP {err.code}") from None
    except (OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise NoDaemon(f"no Ganglion daemon answers at {url} ({reason}); is it running "
                       "(`ganglion run`, or its service)?") from None


def text(status: dict[str, Any]) -> str:
    """The status for a person."""
    lines = [
        f"Ganglion {status['version']}, up {duration_text(status['uptime_seconds'])}",
        f"queue: {status['queue_depth']} waiting, {status['turns_in_flight']} running",
        "LLM endpoints:",
    ]
    for ep in status["endpoints"]:
        models = "" if ep["models"] is None else f", {ep['models']} models"
        if ep["state"] == "healthy":
            lines.append(f"  {ep['name']} ({ep['url']}): healthy{models}")
        else:
            lines.append(f"  {ep['name']} ({ep['url']}): cooling for "
                         f"{ep['cooling_seconds']:.0f} s after: {ep['last_failure']}")
    matrix = status["matrix"]
    lines.append("Matrix: off" if matrix is None else
                 f"Matrix: {matrix['state']}, last sync {matrix['lag_seconds']:.0f} s ago")
    if status.get("database"):
        lines.append(f"database: {status['database']}")
    lines.append(f"reminders pending: {status['reminders_pending']}")
    lines.append(f"tokens today: {status['tokens_today']:,}")
    return "\n".join(lines)
