"""The Matrix interface: the sync loop, encrypted room events to the bus, replies back out.

Translation at the edge, nothing more (the rules are in ``inbound``): events from before
the very first start (the timeline of a sync without a stored token is history), what a room
said before the bot was invited, the bot's own events and those of users or rooms not allowed
never reach the bus; what was said between the invite and the join does (``catchup``: the
first message of a new chat comes before the bot joins). Each room is one thread (its room
id), and so is each ``m.thread`` in it (``<room id>/<root>``); the Matrix event id is the
message's ``client_id``, so a sync read again after a crash or a failure cannot make the bot
answer twice.

The sync token is saved only once a sync's events are on the bus, waiting for their key
(``keys``, kept in memory only) or dropped, and restored at start; the first sync
after a start asks for the full room state (nio keeps none). A limited timeline is caught up
by ``catchup``. Replies leave through the router's outbox and ``send``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from aiohttp import ClientError
from nio import MegolmEvent, RoomMessageText, SyncError

from ganglion.bus import Bus
from ganglion.config_matrix import MatrixConfig
from ganglion.errors import StartupError
from ganglion.interfaces.matrix import inbound, redaction
from ganglion.interfaces.matrix.attachments import Fetcher, is_media
from ganglion.interfaces.matrix.catchup import missed_events, said_since_invite, split_at_join
from ganglion.interfaces.matrix.intake import Intake, NotStored
from ganglion.interfaces.matrix.keys import NIO_CRYPTO_LOGGER, DecryptionWarnings, WaitingForKeys
from ganglion.interfaces.matrix.membership import Membership
from ganglion.interfaces.matrix.replies import with_context
from ganglion.interfaces.matrix.send import RoomSender
from ganglion.interfaces.matrix.session import (
    LOGIN_HINT,
    HomeserverUnavailable,
    TimedClient,
    check_session,
    maintain_keys,
    make_client,
)
from ganglion.messages import (
    Outbound,
    ThreadId,
    is_matrix_thread,
    matrix_room_of,
    matrix_thread_id,
)
from ganglion.render import MarkdownRenderer
from ganglion.router import Router
from ganglion.storage.media import MediaStore

log = logging.getLogger(__name__)

TIMELINE_LIMIT = 50
SYNC_FILTER = {
    "presence": {"not_types": ["*"]},
    "account_data": {"not_types": ["*"]},
    # More events than this in one room since the last sync and the homeserver sends only the
    # newest, marked "limited": catchup pages back for the rest.
    "room": {"timeline": {"limit": TIMELINE_LIMIT}, "account_data": {"not_types": ["*"]},
             # Typing notices and read receipts (ours included) would only wake the loop.
             "ephemeral": {"not_types": ["*"]}},
}
START_CHECK_SECONDS = 10.0
SYNC_GRACE = 60.0
"""Seconds a sync may take beyond its long-poll before it counts as lost (a full-state sync
of a big account takes a while)."""
TOKEN_SAVE_SECONDS = 30.0
STOP_TELL_SECONDS = 1.0
"""At stop, how long telling rooms about unreadable messages may take (stored, so a notice
not sent now is sent at the next start)."""
NOT_STORED_NOTICE = (
    "I could not store your message: my disk refuses writes. I will read it again by myself "
    "as soon as I can store it; there is no need to send it again."
)


class MatrixInterface:
    """Rooms in, replies out; one sync loop task, owned here and cancelled by ``stop``."""

    name = "matrix"

    def __init__(self, config: MatrixConfig, store_path: Path, bus: Bus, router: Router,
                 renderer: MarkdownRenderer, *, tx_prefix: str = "ganglion",
                 media: MediaStore | None = None) -> None:
        self.config = config
        self.store_path = store_path
        self.bus = bus
        self.router = router
        self.client: TimedClient | None = None
        self.ready = asyncio.Event()
        """Set once the first sync is done and the device keys are published (tests, bench)."""
        self.backoff_initial = 0.5
        self.backoff_max = 15.0
        """Seconds between attempts while the homeserver is unreachable (doubling up to this)."""
        self.sync_timeout_ms = 30_000
        self._checked = False
        self._synced = False
        self._started_at = time.monotonic()
        self._last_sync: float | None = None
        """When (monotonic) the last sync succeeded: the lag /status and /metrics show."""
        self._since: str | None = None
        self._token_saved: float | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self.sender = RoomSender(router, renderer, config, store_path, self._spawn,
                                 tx_prefix=tx_prefix)
        self.sender.reply_mode = config.reply_mode
        self.sender.event_of = self._event_of
        self.membership = Membership(config)
        self.keys = WaitingForKeys(router.broadcast, self._spawn)
        self.warnings = DecryptionWarnings()
        self._told_not_stored: set[str] = set()
        """Rooms told that a message waits for the disk; cleared once storing works again."""
        self.intake = (Intake(Fetcher(media), self._submit, router.broadcast, bus.known)
                       if media is not None else None)
        """Media events (none without a media store: they are ignored)."""

    # -- the router's Interface ------------------------------------------------------------

    def owns(self, thread_id: ThreadId) -> bool:
        return is_matrix_thread(thread_id)

    async def start(self) -> None:
        """Open the store, check the login (a wrong config stops start-up), start syncing.

        An unreachable homeserver does not stop start-up: the sync loop keeps trying.
        """
        self.client = client = make_client(self.config, self.store_path)
        try:
            async with asyncio.timeout(START_CHECK_SECONDS):
                await check_session(client, self.config, self.store_path)
            self._checked = True
        except StartupError:
            await client.close()
            raise
        except (HomeserverUnavailable, TimeoutError, OSError, ClientError) as err:
            log.warning("matrix: %s is not reachable now (%s); the bot keeps trying in the "
                        "background", self.config.homeserver, str(err) or type(err).__name__)
        self._since = client.store.load_sync_token() or None
        self._started_at = time.monotonic()
        logging.getLogger(NIO_CRYPTO_LOGGER).addFilter(self.warnings)
        self._sync_task = asyncio.create_task(self._sync_forever(), name="matrix-sync")

    async def stop(self) -> None:
        """Cancel the sync loop and every request in flight, then close the HTTP session."""
        if self._sync_task is not None:
            self._sync_task.cancel()  # no new events while the rest is told
        try:
            async with asyncio.timeout(STOP_TELL_SECONDS):
                await self.keys.tell_the_rest()
        except (TimeoutError, sqlite3.Error) as err:
            log.warning("matrix: could not tell every room of a message it could not read "
                        "(%s)", type(err).__name__)
        tasks = [t for t in (self._sync_task, *self._tasks) if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, self.sender.stop(), return_exceptions=True)
        if self.intake is not None:
            await self.intake.stop()
        self._sync_task = None
        logging.getLogger(NIO_CRYPTO_LOGGER).removeFilter(self.warnings)
        self.warnings.flush()
        self._set_connected(False)
        client, self.client = self.client, None  # what the worker still sends now waits
        if client is not None:
            if since := self._resume_token():
                client.store.save_sync_token(since)
            await client.close()

    async def send(self, out: Outbound) -> bool:
        return await self.sender.send(out)

    async def redact(self, thread_id: ThreadId, event_id: str, reason: str) -> str:
        """"" once the event is removed; else why not, in words for its sender."""
        return await redaction.redact(self.sender.client, matrix_room_of(thread_id), event_id,
                                      reason)

    @property
    def connected(self) -> bool:
        """The last sync worked: replies go out (the sender holds the client only then)."""
        return self.sender.client is not None

    @property
    def sync_state(self) -> str:
        """For /status: syncing, connecting (no sync yet), unreachable, or stopped (a login
        the homeserver refused)."""
        if self._sync_task is None or self._sync_task.done():
            return "stopped"
        if self.connected:
            return "syncing"
        return "connecting" if self._last_sync is None else "unreachable"

    def sync_lag(self) -> float:
        """Seconds since the last successful sync (since the start before the first)."""
        return time.monotonic() - (self._last_sync or self._started_at)

    def _set_connected(self, connected: bool) -> None:
        self.sender.client = self.client if connected else None

    # -- the sync loop ---------------------------------------------------------------------

    async def _sync_forever(self) -> None:
        assert self.client is not None
        client = self.client
        delay = self.backoff_initial
        while True:
            try:
                if not self._checked:
                    await check_session(client, self.config, self.store_path)
                    self._checked = True
                await self._sync_once(client)
            except asyncio.CancelledError:
                raise
            except StartupError as err:
                log.error("%s. The Matrix interface stops; the rest of Ganglion keeps running",
                          err)
                self._set_connected(False)  # replies wait in the outbox for a restart
                return
            except Exception as err:
                # A sync that failed part-way counts as unread: the next attempt asks for it
                # again and the inbox drops what it already has. (Its to-device messages come
                # again too; nio drops the keys it already holds.)
                if self._since:
                    client.next_batch = self._since
                if isinstance(err, NotStored):
                    log.error("matrix: could not store a message (%s); reading it again in "
                              "%.1f s", err, delay)
                elif self.connected:
                    log.warning("matrix: lost the homeserver (%s: %s); retrying in %.1f s, "
                                "replies wait in the outbox", type(err).__name__, err, delay)
                    self._set_connected(False)
                else:
                    log.info("matrix: homeserver still unreachable (%s: %s); retrying in "
                             "%.1f s", type(err).__name__, err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.backoff_max)
                continue
            delay = self.backoff_initial
            self._last_sync = time.monotonic()
            if not self.connected:
                self._set_connected(True)
                log.info("matrix: syncing with %s", self.config.homeserver)
                self._spawn(self.router.deliver_all())

    async def _sync_once(self, client: TimedClient) -> None:
        # The first sync asks for the full room state (nio keeps none across restarts). It,
        # and the first after an outage, returns at once (no long-poll): the replies that
        # waited go out as soon as the homeserver is back.
        first = not self._synced
        poll_ms = 0 if first or not self.connected else self.sync_timeout_ms
        # nio sets no time limit on a sync that does not long-poll: a homeserver that takes
        # the connection and never answers would stall the loop for good.
        async with asyncio.timeout(poll_ms / 1000 + SYNC_GRACE):
            resp = await client.sync(timeout=poll_ms, sync_filter=SYNC_FILTER,
                                     since=self._since if first else None,
                                     full_state=True if first else None)
        if isinstance(resp, SyncError):
            if resp.status_code in ("M_UNKNOWN_TOKEN", "M_MISSING_TOKEN"):
                raise StartupError(f"matrix: the homeserver rejected matrix.access_token "
                                   f"({resp.status_code}); {LOGIN_HINT}")
            raise HomeserverUnavailable(f"sync: {resp}")
        self._synced = True  # the full state is in: later syncs need not ask for it
        arrived = client.sync_arrived
        # No sync token yet: this timeline is history from before the very first start.
        history = self._since is None
        for room_id, info in resp.rooms.invite.items():
            self.membership.on_invite(room_id, info.invite_state)
        for room_id, info in resp.rooms.join.items():
            if history:
                continue
            if not self.config.allows_room(room_id):  # nothing of it is read, nor caught up
                log.debug("[%s] ignored: room not in matrix.allowed_rooms", room_id)
                continue
            self.membership.on_members(client, room_id, [*info.state, *info.timeline.events])
            split = split_at_join(info.timeline.events, self.config.user_id)
            if split is not None:  # joined in this sync
                events = [*await said_since_invite(client, room_id, info.timeline, split[0],
                                                   self.config.user_id), *split[1]]
            else:  # a room the bot was in already
                events = info.timeline.events
                if info.timeline.limited and info.timeline.prev_batch and self._since:
                    events = [*await self._missed(client, room_id, info.timeline.prev_batch,
                                                  self._since), *events]
            for event in events:
                try:
                    await self._on_timeline_event(room_id, event, arrived)
                except NotStored:
                    raise
                except Exception:  # one bad event must not stop the room, nor the others
                    log.exception("[%s] event %s could not be handled", room_id,
                                  getattr(event, "event_id", "?"))
        if self.keys:
            for room_id, waited, event in self.keys.decryptable(client):
                if isinstance(event, RoomMessageText) or is_media(event):
                    await self._readable(room_id, event, arrived)
                self.keys.forget(waited)  # on the bus now (a NotStored keeps it waiting)
        self.warnings.flush()
        await self.membership.settle(client)
        await maintain_keys(client)
        self._since = client.next_batch  # every event up to here is on the bus (or dropped)
        self._told_not_stored.clear()
        if self._token_saved is None or time.monotonic() - self._token_saved >= TOKEN_SAVE_SECONDS:
            self._save_token()
        self.ready.set()

    async def _missed(self, client: TimedClient, room_id: str, prev_batch: str,
                      since: str) -> list[Any]:
        """What a limited timeline left out (more came while away than a sync returns)."""
        known = functools.partial(self.bus.known, matrix_thread_id(room_id))
        return await missed_events(client, room_id, prev_batch, since,
                                   own_id=self.config.user_id, known=known)

    def _save_token(self) -> None:
        """Persist the last fully handled sync token.

        Saved at most every TOKEN_SAVE_SECONDS (a write costs milliseconds of the loop) and
        at stop. After a crash the bot resumes from a slightly older token: the events it
        then sees again are deduplicated by the bus, so nothing is answered twice.
        """
        if self.client is not None and (since := self._resume_token()):
            self.client.store.save_sync_token(since)
            self._token_saved = time.monotonic()

    def _resume_token(self) -> str | None:
        """The token after which every event is on the bus (or dropped): the last sync's,
        or the one before a media event still on its way."""
        waiting = self.intake.resume_token() if self.intake is not None else None
        return waiting or self._since

    # -- events in -------------------------------------------------------------------------

    async def _on_timeline_event(self, room_id: str, event: Any, arrived: float) -> None:
        why = inbound.refusal(self.config, event)
        if why is not None:
            if why:
                log.info("[%s] ignored %s", room_id, why)
            return
        if isinstance(event, MegolmEvent):
            assert self.client is not None
            await self.keys.add(self.client, room_id, event)
            return
        await self._readable(room_id, event, arrived)

    async def _readable(self, room_id: str, event: Any, arrived: float) -> None:
        """A media event, and a message of a thread still waiting for one, go through the
        intake (downloads off this loop, the thread's order kept); the rest straight in."""
        intake = self.intake
        if intake is not None and self.client is not None and (
                is_media(event) or intake.busy(inbound.thread_of(room_id, event))):
            intake.take(self.client, room_id, event, arrived, self._since)
        elif not is_media(event):  # (without a media store, media events are not read)
            await self._submit(room_id, event, arrived)

    async def _submit(self, room_id: str, event: Any, arrived: float,
                      attachments: tuple[str, ...] = ()) -> None:
        msg = inbound.to_inbound(room_id, event, attachments)
        if msg is None:
            log.info("[%s] ignored an edit of an earlier message", room_id)
            return
        if self.client is not None:
            msg = await with_context(self.client, self.bus.inbox, room_id, event, msg)
        try:
            stored, is_new = await self.bus.submit(msg)
        except sqlite3.Error as err:  # the disk refused the write (read-only, full, broken)
            if room_id not in self._told_not_stored:
                self._told_not_stored.add(room_id)
                self._spawn(self.sender.notice_now(room_id, NOT_STORED_NOTICE))
            raise NotStored(f"event {event.event_id} in {room_id}: {err}") from err
        if is_new:
            self.sender.received(stored.id, arrived)
            self.sender.receipts.accepted(room_id, event.event_id, stored.id)
            log.debug("[%s] event %s from %s queued as #%d", room_id, event.event_id,
                      event.sender, stored.id)

    async def _event_of(self, inbox_id: int) -> str | None:
        """The Matrix event behind an inbox row (the message an answer answers)."""
        meta = await self.bus.inbox.meta_of(inbox_id)
        return meta.get("event_id") if meta else None

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            log.error("matrix: background task failed", exc_info=exc)

