"""The composition root: builds every part, starts them in order, stops them in reverse."""

from __future__ import annotations

import asyncio
import importlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from ganglion.access import Access
from ganglion.assistant_state import AssistantState, StateParts
from ganglion.bus import Bus
from ganglion.commands import CommandTable, Rank
from ganglion.config import LoadedConfig, secret_values
from ganglion.config_database import shown_database
from ganglion.errors import StartupError
from ganglion.interfaces.web import WebInterface
from ganglion.interfaces.web_status import MetricsListener, StatusRoutes
from ganglion.llm.client import LLMClient
from ganglion.llm.endpoints import EndpointPool
from ganglion.logs import SecretMask
from ganglion.messages import Inbound, Outbound, OutKind
from ganglion.metrics import Metrics
from ganglion.model_commands import ModelCommands, without_secrets
from ganglion.render import MarkdownRenderer
from ganglion.router import Router
from ganglion.status import StatusReport
from ganglion.storage.backend import Backend, DatabaseInUse, MigrationFailed, StorageError
from ganglion.storage.catalog import Catalog
from ganglion.storage.connect import hold_database, open_database
from ganglion.storage.conversations import Conversations
from ganglion.storage.files import DataFiles, web_token
from ganglion.storage.history import History
from ganglion.storage.inbox import Inbox
from ganglion.storage.lock import DataFolderInUse, DataLock
from ganglion.storage.media import MEDIA_DIR, MediaStore
from ganglion.storage.outbox import Outbox
from ganglion.storage.reminders import HeartbeatLedger, ReminderStore
from ganglion.storage.retention import Retention
from ganglion.storage.usage import UsageLog
from ganglion.tool_names import TOOL_NAMES, mcp_server_of
from ganglion.toolbox import builtin_tools, memory_tools, tool_workspace, workspace_dir
from ganglion.tools.listing import ToolsCommand
from ganglion.tools.policy import Approvals, ToolPolicy, ToolRunner
from ganglion.tools.registry import ToolRegistry
from ganglion.tools.reminders import ReminderTools
from ganglion.tools.web import web_tools
from ganglion.triggers import local_zone, new_scheduler, stop_scheduler, zone_clock
from ganglion.triggers.heartbeat import Heartbeat, HeartbeatReviews
from ganglion.triggers.reminders import Reminders
from ganglion.turn.attachments import Attachments
from ganglion.turn.compaction import Compactor
from ganglion.turn.memory_flush import MemoryFlush
from ganglion.turn.title import Titler
from ganglion.turn.vision import Vision
from ganglion.worker import Clock, Worker

if TYPE_CHECKING:
    from ganglion.interfaces.matrix.interface import MatrixInterface
    from ganglion.tools.mcp.manager import McpTools

log = logging.getLogger(__name__)

STOP_SECONDS = 4.0
"""All parts together get this long to stop, so the daemon is gone within 5 s of SIGTERM."""
STOP_FLOOR_SECONDS = 0.05
"""A part still gets this long when an earlier one used up the time: enough for a healthy
part to cancel its tasks (the database to close), little enough that ten such stay in 5 s."""


class App:
    """Ganglion's parts and their lifecycle. Tests build one in-process; the CLI runs one."""

    def __init__(
        self,
        loaded: LoadedConfig,
        *,
        clock: Clock | None = None,
        secret_mask: SecretMask | None = None,
    ) -> None:
        self.loaded = loaded
        self.config = loaded.config
        self.secret_mask = secret_mask or SecretMask(secret_values(self.config))
        """The log's mask (from the CLI); keys of endpoints added at run time join it."""
        self.tz = local_zone(self.config.scheduler.timezone)
        self.clock = clock if clock is not None else zone_clock(self.tz)
        """The time the model is told and reminder times are read in: scheduler.timezone."""
        self.data_dir = loaded.data_dir
        self.files = DataFiles(self.data_dir)
        self.web: WebInterface | None = None
        self.matrix: MatrixInterface | None = None
        self.mcp: McpTools | None = None
        self.metrics = Metrics()
        """This App's own: tests build many Apps in one process."""
        self.metrics_listener: MetricsListener | None = None
        self._stops: list[tuple[str, Callable[[], Awaitable[None]]]] = []
        self.stuck: list[str] = []
        """The parts that did not stop in time when a failed or cancelled start stopped."""

    async def start(self) -> None:
        """Start every part in order. Failed or cancelled (a signal during start-up), it
        stops the parts already started, in reverse, before the error goes on."""
        try:
            await self._start()
        except BaseException:
            self.stuck = await self.stop()
            raise

    async def _open_database(self) -> Backend:
        """database.url's database, migrated; on PostgreSQL held by this daemon alone (the
        data folder's lock does not reach a database other machines can open)."""
        url = self.config.database.url
        where = shown_database(url)
        try:
            if self.config.database.is_postgres:
                self._stops.append(("database lock", await hold_database(url, where)))
            return await open_database(url, self.data_dir, where)
        except (MigrationFailed, DatabaseInUse, StorageError) as err:
            raise StartupError(str(err)) from None

    async def _start(self) -> None:
        started = time.monotonic()
        cfg = self.config
        metrics = self.metrics
        # First of all: a second daemon on this folder would answer the unanswered messages
        # the bus re-runs at start a second time (two model calls, a memory written twice).
        self.data_dir.mkdir(parents=True, exist_ok=True)
        lock = DataLock(self.data_dir)
        try:
            lock.acquire()
        except DataFolderInUse as err:
            raise StartupError(str(err)) from None
        self._stops.append(("data folder lock", _released(lock)))
        self.files.ensure_layout()

        self.db = await self._open_database()
        self._stops.append(("database", self.db.close))
        self.inbox = Inbox(self.db)
        self.history = History(self.db)
        self.outbox = Outbox(self.db)
        self.reminder_store = ReminderStore(self.db, self.data_dir / "reminders.json", self.tz)
        self.heartbeat_ledger = HeartbeatLedger(self.db)
        self.reviews = HeartbeatReviews(cfg.heartbeat, self.heartbeat_ledger, self.clock)

        self.catalog = Catalog(self.db)
        self.endpoints = EndpointPool(cfg.llm, self.catalog, on_secret=self.secret_mask.add,
                                      on_failed=metrics.endpoint_failed)
        await self.endpoints.load()
        self._stops.append(("endpoints", self.endpoints.close))
        self.usage = UsageLog(self.db)
        self.access = Access(cfg, self.usage, clock=self.clock, on_charged=metrics.charged)
        self.llm = LLMClient(cfg.llm, debug=cfg.logging.debug_llm, pool=self.endpoints,
                             usage_sink=self.access.charge, on_call=metrics.llm_call)
        self._stops.append(("llm client", self.llm.close))
        self.router = Router(self.history, self.outbox)
        self.tools = ToolRegistry()
        self.commands = CommandTable(rank_of=self.access.rank_of)
        self.access.register(self.commands)
        self.model_commands = ModelCommands(self.endpoints, self.catalog, self.llm, self.access,
                                            self.inbox)
        await self.model_commands.load()
        self.model_commands.register(self.commands)
        self.model_commands.tell_owner = self._tell_owner
        self.approvals = Approvals(
            lambda msg: self.access.rank_of(msg) >= Rank.TRUSTED,
            cfg.tools.approval_timeout_seconds,
            lambda tid, text: self.router.broadcast(text, tid),
            # While a call waits the page says so; once answered the call runs (or not).
            lambda tid, waiting: self.router.publish(
                Outbound(tid, OutKind.STATE, "approval" if waiting else "tool")))
        self.approvals.register(self.commands)
        self.tool_runner = ToolRunner(self.tools, ToolPolicy(cfg.tools.policy), self.approvals)
        self._add_tools()
        self._add_mcp()
        summariser = cfg.llm.compaction_model or cfg.llm.model
        # The summary request must fit the compaction model's own context.
        self.compactor = Compactor(self.llm, self.history, summariser,
                                   cfg.llm.context_tokens_for(summariser),
                                   before=MemoryFlush(self.llm, cfg.llm.model, self.tool_runner,
                                                      self.files))
        self.conversations = Conversations(self.db)
        self.media = MediaStore(self.db, self.data_dir / MEDIA_DIR, cfg.media.max_bytes)
        self.titler = Titler(self.llm, self.conversations, self.router, summariser,
                             idle=lambda: self.bus.wait_idle())  # noqa: PLW0108 (built below)
        self._stops.append(("titles", self.titler.stop))
        attachments = Attachments(self.media, cfg.stt, tool_workspace(self.loaded))
        self._stops.append(("speech to text", attachments.close))
        self.worker = Worker(
            llm=self.llm, history=self.history, router=self.router, files=self.files,
            tools=self.tools, runner=self.tool_runner, commands=self.commands,
            compactor=self.compactor,
            model=cfg.llm.model, max_tool_steps=cfg.llm.max_tool_steps, clock=self.clock,
            reviews=self.reviews, admit=self.access.admit,
            model_for=self.model_commands.model_for,
            context_tokens_for=cfg.llm.context_tokens_for,
            tools_note=self.mcp.down_note if self.mcp is not None else None,
            sees_details=lambda msg: self.access.rank_of(msg) >= Rank.TRUSTED,
            titles=self.titler if cfg.web.titles == "model" else None,
            on_turn_done=metrics.turn_done,
            vision=Vision(self.media, cfg.llm.sees_images, cfg.media.max_image_pixels,
                          cfg.media.history_images),
            attachments=attachments,
        )
        self.bus = Bus(self.inbox, self.worker, cfg.bus.max_turns_in_flight)
        metrics.read_queue(self.bus.depth, self.bus.in_flight)
        self.status = StatusReport(self.bus, self.endpoints, self.reminder_store, self.usage,
                                   self.clock, self.secret_mask.masked, started=started,
                                   database=self.db.where)
        # Immediate: the messages it drops wait in the lane it would otherwise wait in.
        self.commands.add("cancel", "/cancel", "drop the messages waiting for an answer in "
                          "this conversation (Stop ends the one being answered)",
                          self._cancel_queued, immediate=True)
        self._add_triggers()
        # The config checked tools.policy against TOOL_NAMES; they must be these tools
        # (web_search is there only with a search service; MCP servers' tools come and go,
        # named <server>__<tool>).
        unregistered = {"web_search"} if not cfg.tools.web.search_url else set()
        builtins = {n for n in self.tools.names() if mcp_server_of(n) is None}
        if builtins != TOOL_NAMES - unregistered:
            raise RuntimeError(
                "ganglion/tool_names.py lists other tools than App registers: "
                f"{sorted((TOOL_NAMES - unregistered) ^ builtins)}")
        if self.mcp is not None:  # before the bus, so stopped after it: no turn calls a tool
            self._stops.append(("mcp servers", self.mcp.stop))

        # The bus first: it re-queues what the last run left unanswered before any interface
        # can add new work behind it. Replies produced before an interface is up wait in the
        # outbox.
        await self.bus.start()
        self._stops.append(("bus", self.bus.stop))

        if cfg.web.enabled:
            self.web_token = web_token(cfg.web.token, self.data_dir)
            self.secret_mask.add(self.web_token)  # a generated one is known from here on
            status = StatusRoutes(self.status.report, metrics.exposition)
            self.web = WebInterface(cfg.web, self.web_token, self.bus, self.router,
                                    self.history, self.inbox, MarkdownRenderer(),
                                    shown=without_secrets, deleted=self.reminders.rearm,
                                    conversations=self.conversations, routes=status.add_to,
                                    media=self.media, settings=self._assistant_state())
            self.router.register(self.web)
            await self.web.start()
            self._stops.append(("web", self.web.stop))

        if cfg.matrix.enabled:
            # Imported here: nio takes about a second to import, paid only when Matrix is on.
            from ganglion.interfaces.matrix.interface import MatrixInterface  # noqa: PLC0415

            # Transaction ids name this database too: after a reset of conversation.db its
            # message ids start again, and the homeserver would drop new replies as resends.
            self.matrix = MatrixInterface(cfg.matrix, self.loaded.path(cfg.matrix.store_path),
                                          self.bus, self.router, MarkdownRenderer(),
                                          tx_prefix=f"ganglion-{await self.db.instance_id()}",
                                          media=self.media)
            self.router.register(self.matrix)
            self.status.matrix = self.matrix
            metrics.read_matrix_lag(self.matrix.sync_lag)
            self.model_commands.redact = self.matrix.redact
            self._stops.append(("matrix", self.matrix.stop))
            await self.matrix.start()

        if cfg.web.metrics_bind:
            self.metrics_listener = MetricsListener(cfg.web.metrics_bind, metrics.exposition)
            await self.metrics_listener.start()
            self._stops.append(("metrics", self.metrics_listener.stop))

        await self.router.deliver_all()

        # Triggers last: what came due while the daemon was down goes on the bus now, behind
        # what the last run left unanswered, with every interface up to deliver it.
        self.scheduler.start()
        self._stops.append(("scheduler", lambda: stop_scheduler(self.scheduler)))
        await self.reminders.start()
        self._stops.append(("reminders", self.reminders.stop))
        self.heartbeat.start()
        self._stops.append(("heartbeat", self.heartbeat.stop))
        # Pruning runs beside the service, in small batches: never in the way of a turn.
        self.retention = Retention(self.db, cfg.storage.keep_days, media=self.media,
                                   media_days=cfg.media.keep_days)
        self.retention.start()
        self._stops.append(("retention", self.retention.stop))

        self.ready_seconds = time.monotonic() - started
        log.info("ready in %.2f s; LLM: %s", self.ready_seconds, self.llm.describe())
        probe = asyncio.create_task(self._report_llm(), name="llm-probe")
        self._stops.append(("llm probe", lambda: _cancel(probe)))
        if self.mcp is not None:
            # Once ready: the SDK's import (a second of CPU, in a thread) would hold the GIL
            # against the start-up otherwise. The servers' tools appear as they connect.
            self.mcp.start()

    async def _tell_owner(self, text: str) -> None:
        """A notice for the owner, in the conversation where they wrote last (a web tab, or a
        Matrix room where matrix.owner wrote), as the heartbeat's budget notice."""
        thread = await self.heartbeat_ledger.owner_thread(0.0, self.config.matrix.owner)
        if thread is not None:
            await self.router.broadcast(text, thread)

    def _assistant_state(self) -> AssistantState:
        """What the page's settings view reads and changes, through the parts' own verbs."""
        mcp = self.mcp
        return AssistantState(StateParts(
            self.files, memory_tools(self.loaded, self.files), self.reminders,
            self.conversations, self.tool_runner, lambda: mcp.states() if mcp is not None else [],
            self.endpoints, self.model_commands, self.usage, self.clock,
            self.secret_mask.masked, self.loaded.source))

    def _add_tools(self) -> None:
        """Memory, file, shell and web tools (their policy is applied by the ToolRunner)."""
        workspace_dir(self.loaded).mkdir(parents=True, exist_ok=True)
        funcs, shell = builtin_tools(self.loaded, self.files)
        for func in funcs:
            self.tools.add(func)
        self.tool_runner.describe_with("shell", shell.describe)
        web_funcs, web_describe = web_tools(self.config.tools.web)
        for func in web_funcs:
            self.tools.add(func)
        for name, describe in web_describe.items():
            self.tool_runner.describe_with(name, describe)

    def _add_mcp(self) -> None:
        """MCP servers (when configured): their tools join the registry as they connect."""
        cfg = self.config
        if any(server.enabled for server in cfg.mcp.servers.values()):
            # Imported here: with no server configured nothing of MCP is loaded; the SDK
            # itself is imported in the background once the daemon runs.
            from ganglion.tools.mcp.manager import Limits, McpTools  # noqa: PLC0415

            self.mcp = McpTools(
                cfg.mcp.servers, self.tools,
                Limits(cfg.tools.mcp_timeout_seconds, cfg.tools.mcp_max_output_bytes),
                environ=os.environ, run_dir=self.data_dir / ".mcp", cwd=self.data_dir)
        mcp = self.mcp
        ToolsCommand(self.tool_runner, lambda: mcp.states() if mcp is not None else [],
                     secret_values(cfg)).register(self.commands)

    def _add_triggers(self) -> None:
        """Reminders and heartbeats: producers on the bus, on one APScheduler in this loop."""
        cfg = self.config
        self.scheduler = new_scheduler(self.tz)
        self.reminders = Reminders(self.reminder_store, self.bus, self.scheduler, self.tz,
                                   self.clock,
                                   sees_all=lambda msg: self.commands.rank_of(msg) >= Rank.TRUSTED,
                                   on_fired=self.metrics.reminder_fired)
        self.heartbeat = Heartbeat(cfg.heartbeat, self.reviews, self.heartbeat_ledger,
                                   self.reminder_store, self.bus, self.router, self.files,
                                   self.scheduler, self.tz, owner=cfg.matrix.owner)
        for func in ReminderTools(self.reminders, cfg.scheduler.min_repeat_minutes).tools():
            self.tools.add(func)
        self.commands.add("reminders", "/reminders",
                          "list reminders: next time, kind, conversation, repeat",
                          self.reminders.cmd_reminders)
        self.commands.add("heartbeat", "/heartbeat",
                          "review this conversation against HEARTBEATS.txt now",
                          self.heartbeat.cmd_heartbeat)

    async def _cancel_queued(self, msg: Inbound, args: str) -> str:
        # In a shared room, a member drops only their own messages; the owner, trusted users
        # and the web UI (the owner's) drop everyone's.
        everyone = self.access.rank_of(msg) >= Rank.TRUSTED
        cancelled = await self.bus.cancel_queued(msg.thread_id,
                                                 None if everyone else msg.sender)
        if not cancelled:
            return ("No message is waiting in this conversation." if everyone else
                    "No message of yours is waiting in this conversation.")
        if len(cancelled) == 1:
            return "Cancelled 1 queued message; it will not be answered."
        return f"Cancelled {len(cancelled)} queued messages; they will not be answered."

    async def _report_llm(self) -> None:
        """Say plainly, once, whether the configured endpoint answers and how to change it."""
        # The openai package takes most of a cold start: import it off the event loop now
        # that the daemon is ready, instead of before it.
        await asyncio.to_thread(importlib.import_module, "openai")
        # Every endpoint's models, for routing and /models; the first one's answer is the probe.
        problems = await self.endpoints.discover()
        problem = problems.get(self.endpoints.endpoints()[0].name)
        how = ("to use another, set llm.endpoints (base_url, api_key) and llm.model in "
               "config.yaml; see config.yaml.example")
        if problem is None:
            log.info("LLM: %s is reachable; %s", self.llm.describe(), how)
        else:
            problem = problem.rstrip(".")
            end = "" if problem.endswith(("?", "!")) else "."
            log.warning("LLM: %s is NOT reachable: %s%s Chats will say so until it is; %s",
                        self.llm.describe(), problem, end, how)

    async def stop(self) -> list[str]:
        """Stop parts in reverse order within STOP_SECONDS in all; each gets what remains.

        Returns the parts that did not stop in time (they are logged); the CLI then exits
        anyway, since what hangs (a database call blocked on a lock) may hold the process.
        """
        deadline = time.monotonic() + STOP_SECONDS
        stuck: list[str] = []
        while self._stops:
            name, stop = self._stops.pop()
            limit = max(deadline - time.monotonic(), STOP_FLOOR_SECONDS)
            # A task of its own, left behind when late: wait_for would wait on after the
            # time-out for a stop that awaits in its clean-up (aiosqlite's close does).
            task = asyncio.ensure_future(stop())
            done, _ = await asyncio.wait({task}, timeout=limit)
            if not done:
                task.cancel()
                stuck.append(name)
                log.error("%s did not stop within %.2f s; moving on", name, limit)
            elif not task.cancelled() and (exc := task.exception()) is not None:
                log.error("%s failed to stop cleanly", name, exc_info=exc)
        return stuck


def _released(lock: DataLock) -> Callable[[], Awaitable[None]]:
    """The lock's release as a stop: the last one, after the database has closed."""
    async def release() -> None:
        lock.release()
    return release


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
