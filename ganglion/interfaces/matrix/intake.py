"""Media events to the bus off the sync loop, each thread's messages kept in their order.

Place in the flow: the interface hands ``take`` every media event, and every other message
of a thread while one of that thread's media events is still on its way; each becomes a
task of the thread's lane that downloads at once (``attachments``) but puts its message on
the bus only after the lane's previous one. So a slow download never holds the sync loop
(other rooms, other threads, key shares go on), and "photo, then: what is this?" reaches the
worker in that order.

Exactly once: an event still on its way pins the sync token to the one it came after
(``resume_token``: what the interface saves), so a crash before it is on the bus reads it
again at the next start; one already on the bus is not downloaded again (``known``), and
the bus stores each event id once.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nio import AsyncClient

from ganglion.interfaces.matrix import inbound
from ganglion.interfaces.matrix.attachments import Fetcher, Refused, attachment_of, is_media
from ganglion.messages import ThreadId

log = logging.getLogger(__name__)

DOWNLOADS_AT_ONCE = 3
"""Files fetched at the same time; the others wait their turn (an encrypted file is held
whole in memory to be decrypted: at most this many times ``media.max_bytes``)."""

Submit = Callable[[str, Any, float, tuple[str, ...]], Awaitable[None]]
"""(room id, event, arrived, media ids) -> the message is on the bus; NotStored if the disk
refused it."""
Tell = Callable[[str, ThreadId], Awaitable[None]]
"""(text, thread) -> a notice stored and delivered (the router's broadcast)."""
Known = Callable[[ThreadId, list[str]], Awaitable[set[str]]]
"""Of these event ids, the ones already on the bus (the bus's ``known``)."""


class NotStored(Exception):
    """The inbox refused a message (the disk refuses writes): it is stored again later."""


class Intake:
    """The lanes of the threads that wait for a download; the tasks are owned here."""

    def __init__(self, fetcher: Fetcher, submit: Submit, tell: Tell, known: Known) -> None:
        self.fetcher = fetcher
        self._submit = submit
        self._tell = tell
        self._known = known
        self.retry_max = 15.0
        """Seconds between tries to store a message the disk refused (doubling to this)."""
        self._lanes: dict[ThreadId, asyncio.Task[None]] = {}
        """Each busy thread's newest task."""
        self._resume: dict[str, str | None] = {}
        """Event id -> the sync token it came after, for each event not yet on the bus,
        oldest first."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._downloads = asyncio.Semaphore(DOWNLOADS_AT_ONCE)

    def busy(self, thread_id: ThreadId) -> bool:
        """A message of this thread is still on its way: later ones queue behind it."""
        return thread_id in self._lanes

    def resume_token(self) -> str | None:
        """The sync token to save: the one before the oldest event not yet on the bus, or
        None when none waits."""
        return next((t for t in self._resume.values() if t), None)

    def take(self, client: AsyncClient, room_id: str, event: Any, arrived: float,
             since: str | None) -> None:
        """Put ``event`` (which came after sync token ``since``) on the bus in its turn."""
        if event.event_id in self._resume:
            return  # a sync read again after a failure: it is on its way already
        thread = inbound.thread_of(room_id, event)
        task = asyncio.create_task(
            self._run(client, room_id, thread, event, arrived, before=self._lanes.get(thread)),
            name=f"matrix-intake-{event.event_id}")
        self._lanes[thread] = task
        self._resume[event.event_id] = since
        self._tasks.add(task)
        task.add_done_callback(functools.partial(self._done, thread, event.event_id))

    async def stop(self) -> None:
        """Cancel what is on its way; its events stay in ``resume_token`` (read again at the
        next start)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _done(self, thread: ThreadId, event_id: str, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if self._lanes.get(thread) is task:
            del self._lanes[thread]
        if task.cancelled():
            return  # not on the bus: the token stays pinned for the next start
        self._resume.pop(event_id, None)
        if (exc := task.exception()) is not None:
            log.error("[%s] event %s could not be handled", thread, event_id, exc_info=exc)

    async def _run(self, client: AsyncClient, room_id: str, thread: ThreadId, event: Any,
                   arrived: float, *, before: asyncio.Task[None] | None) -> None:
        ids: tuple[str, ...] = ()
        if is_media(event) and inbound.to_inbound(room_id, event) is not None:
            if await self._known(thread, [event.event_id]):
                return  # stored before a restart: its file too
            stored = await self._fetch(client, thread, event)
            if stored is None:
                return
            ids = (stored,)
        if before is not None:
            await asyncio.wait([before])  # its outcome is its own (logged by _done)
        delay = 0.5
        while True:
            try:
                await self._submit(room_id, event, arrived, ids)
                return
            except NotStored as err:  # the sync loop would read it again: here, store again
                log.error("matrix: %s; storing it again in %.1f s", err, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.retry_max)

    async def _fetch(self, client: AsyncClient, thread: ThreadId, event: Any) -> str | None:
        """The media id of the event's stored file; None once the person was told why not."""
        att = attachment_of(event)
        try:
            if isinstance(att, str):
                raise Refused(att)
            async with self._downloads:
                media = await self.fetcher.fetch(client, att, owner=f"matrix:{event.sender}")
        except Refused as err:
            log.info("[%s] refused the file of %s: %s", thread, event.event_id, err)
            await self._tell(str(err), thread)
            return None
        log.info("[%s] stored the %s of %s as %s (%s, %d bytes)", thread,
                 "voice message" if att.voice else att.msgtype, event.event_id, media.id[:16],
                 media.type, media.bytes)
        return media.id
