"""The composition root: builds every part, starts them in order, stops them in reverse."""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from ganglion.bus import Bus
from ganglion.commands import CommandTable
from ganglion.config import LoadedConfig
from ganglion.interfaces.web import WebInterface
from ganglion.llm.client import LLMClient
from ganglion.llm.compaction import Compactor
from ganglion.render import MarkdownRenderer
from ganglion.router import Router
from ganglion.storage.db import Database
from ganglion.storage.files import DataFiles, atomic_write
from ganglion.storage.history import History
from ganglion.storage.inbox import Inbox
from ganglion.storage.outbox import Outbox
from ganglion.tools.registry import ToolRegistry
from ganglion.worker import Clock, Worker, local_now

log = logging.getLogger(__name__)

STOP_SECONDS = 3.0
"""Each part gets this long to stop; the whole daemon must be gone within 5 s of SIGTERM."""


def web_token(configured: str, data_dir: Path) -> str:
    """The configured token, else the one kept in data/web_token (generated once, mode 0600)."""
    if configured:
        return configured
    path = data_dir / "web_token"
    if path.is_file():
        token = path.read_text(encoding="utf-8").strip()
        if token:
            return token
    token = secrets.token_urlsafe(32)
    atomic_write(path, token + "\n")
    return token


class App:
    """Ganglion's parts and their lifecycle. Tests build one in-process; the CLI runs one."""

    def __init__(self, loaded: LoadedConfig, *, clock: Clock = local_now) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.clock = clock
        self.data_dir = loaded.data_dir
        self.files = DataFiles(self.data_dir)
        self.web: WebInterface | None = None
        self._stops: list[tuple[str, Callable[[], Awaitable[None]]]] = []

    async def start(self) -> None:
        try:
            await self._start()
        except BaseException:
            await self.stop()
            raise

    async def _start(self) -> None:
        started = time.monotonic()
        cfg = self.config
        self.files.ensure_layout()

        self.db = await Database.open(self.data_dir / "conversation.db")
        self._stops.append(("database", self.db.close))
        self.inbox = Inbox(self.db)
        self.history = History(self.db)
        self.outbox = Outbox(self.db)

        self.llm = LLMClient(cfg.llm, debug=cfg.logging.debug_llm)
        self._stops.append(("llm client", self.llm.close))
        self.router = Router(self.history, self.outbox)
        self.tools = ToolRegistry()
        self.commands = CommandTable()
        self.compactor = Compactor(self.llm, self.history,
                                   cfg.llm.compaction_model or cfg.llm.model,
                                   cfg.llm.context_tokens)
        self.worker = Worker(
            llm=self.llm, history=self.history, router=self.router, files=self.files,
            tools=self.tools, commands=self.commands, compactor=self.compactor,
            model=cfg.llm.model, max_tool_steps=cfg.llm.max_tool_steps, clock=self.clock,
        )
        self.bus = Bus(self.inbox, self.worker, cfg.bus.max_turns_in_flight)

        # The bus first: it re-queues what the last run left unanswered before any interface
        # can add new work behind it. Replies produced before an interface is up wait in the
        # outbox.
        await self.bus.start()
        self._stops.append(("bus", self.bus.stop))

        if cfg.web.enabled:
            self.web_token = web_token(cfg.web.token, self.data_dir)
            self.web = WebInterface(cfg.web, self.web_token, self.bus, self.router,
                                    self.history, self.inbox, MarkdownRenderer())
            self.router.register(self.web)
            await self.web.start()
            self._stops.append(("web", self.web.stop))

        await self.router.deliver_all()
        self.ready_seconds = time.monotonic() - started
        log.info("ready in %.2f s; LLM: %s", self.ready_seconds, self.llm.describe())
        probe = asyncio.create_task(self._report_llm(), name="llm-probe")
        self._stops.append(("llm probe", lambda: _cancel(probe)))

    async def _report_llm(self) -> None:
        """Say plainly, once, whether the configured endpoint answers and how to change it."""
        problem = await self.llm.check()
        how = ("to use another, set llm.endpoints (base_url, api_key) and llm.model in "
               "config.yaml; see config.yaml.example")
        if problem is None:
            log.info("LLM: %s is reachable; %s", self.llm.describe(), how)
        else:
            log.warning("LLM: %s is NOT reachable: %s. Chats will say so until it is; %s",
                        self.llm.describe(), problem, how)

    async def stop(self) -> None:
        """Stop parts in reverse order, each within STOP_SECONDS."""
        while self._stops:
            name, stop = self._stops.pop()
            try:
                await asyncio.wait_for(stop(), STOP_SECONDS)
            except TimeoutError:
                log.error("%s did not stop within %.0f s; moving on", name, STOP_SECONDS)
            except Exception:
                log.exception("%s failed to stop cleanly", name)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
