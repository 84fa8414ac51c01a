"""Encrypted events the Matrix interface holds no key for: logged, keys asked for, room told.

A message encrypted with a room key this device never received must not vanish silently
(shared/notes/matrix-e2ee.md): it is logged, its key is requested from the bot's own other
devices and from the sender's devices (which answer when they once shared that session with
this device), and if no key comes within ``grace`` seconds (or the daemon stops first:
waiting events are kept in memory only) the room is told, once per session. Each sync asks
``decryptable`` for the waiting events whose key has arrived since.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import ClientError
from nio import AsyncClient, LocalProtocolError, MegolmEvent

from ganglion.messages import ThreadId, matrix_thread_id

log = logging.getLogger(__name__)

NIO_CRYPTO_LOGGER = "nio.crypto.log"
_NO_SESSION = re.compile(r"\AError decrypting megolm event, no session found with session "
                         r"id \S+ for room (\S+)\Z")
MAX_SESSIONS = 100
"""Sessions whose key never comes (and rooms told) are forgotten, oldest first, beyond this."""
UNDECRYPTABLE_NOTICE = (
    "I could not read a message here: it was encrypted with a key this device never received. "
    "I asked your devices for the key. If this keeps happening, make sure your client does not "
    "send only to verified devices (a bot cannot be verified interactively), or invite me to a "
    "new room."
)


class WaitingForKeys:
    def __init__(self, broadcast: Callable[[str, ThreadId], Awaitable[None]],
                 spawn: Callable[[Coroutine[Any, Any, Any]], None]) -> None:
        self.grace = 5.0
        """Seconds an undecryptable message may wait for its key before the room is told."""
        self._broadcast = broadcast
        """(text, thread): a notice stored and delivered (the router's)."""
        self._spawn = spawn
        self._waiting: dict[str, list[tuple[str, MegolmEvent]]] = {}
        self._told: dict[tuple[str, str], bool] = {}
        """(room, session) pairs whose notice is due (False) or sent (True), oldest first,
        bounded."""

    def __bool__(self) -> bool:
        return bool(self._waiting)

    async def add(self, client: AsyncClient, room_id: str, event: MegolmEvent) -> None:
        log.warning("[%s] cannot decrypt event %s from %s (session %s); requesting the key",
                    room_id, event.event_id, event.sender, event.session_id)
        self._waiting.setdefault(event.session_id, []).append((room_id, event))
        while len(self._waiting) > MAX_SESSIONS:
            del self._waiting[next(iter(self._waiting))]
        try:
            await _request_key(client, event)
        except (OSError, ClientError, TimeoutError) as err:
            log.info("[%s] key request not sent: %s", room_id, err)
        told = (room_id, event.session_id)
        if told not in self._told:
            self._told[told] = False
            while len(self._told) > MAX_SESSIONS:
                del self._told[next(iter(self._told))]
            self._spawn(self._tell_later(room_id, event.session_id))

    def decryptable(self, client: AsyncClient) -> list[tuple[str, MegolmEvent, Any]]:
        """(room id, waiting event, decrypted event) for each event whose key has arrived.

        They stay waiting until ``forget``: only once on the bus are they done with.
        """
        sessions = client.olm.inbound_group_store
        out: list[tuple[str, MegolmEvent, Any]] = []
        for session_id, waiting in self._waiting.items():
            room_id, first = waiting[0]
            if not sessions.get(room_id, first.sender_key, session_id):
                continue  # the key has not come yet
            for room_id, event in waiting:
                try:
                    decrypted = client.decrypt_event(event)
                except Exception as err:  # a key from a later index: this one stays unread
                    log.debug("[%s] event %s still unreadable: %s", room_id, event.event_id,
                              err)
                    continue
                log.info("[%s] event %s decrypted after its key arrived", room_id,
                         event.event_id)
                out.append((room_id, event, decrypted))
        return out

    def forget(self, event: MegolmEvent) -> None:
        """``event`` is handled: it waits no more."""
        waiting = self._waiting.get(event.session_id, [])
        waiting[:] = [(r, e) for r, e in waiting if e.event_id != event.event_id]
        if not waiting:
            self._waiting.pop(event.session_id, None)

    async def _tell_later(self, room_id: str, session_id: str) -> None:
        await asyncio.sleep(self.grace)
        if any(r == room_id for r, _ in self._waiting.get(session_id, ())):
            self._told[(room_id, session_id)] = True
            await self._broadcast(UNDECRYPTABLE_NOTICE, matrix_thread_id(room_id))

    async def tell_the_rest(self) -> None:
        """At stop: the waiting events live in memory only, so the rooms whose grace has not
        run out yet are told now (their notice is stored, sent now or at the next start)."""
        rooms = {room_id for session_id, waiting in self._waiting.items()
                 for room_id, _ in waiting if not self._told.get((room_id, session_id))}
        for room_id in sorted(rooms):
            await self._broadcast(UNDECRYPTABLE_NOTICE, matrix_thread_id(room_id))


async def _request_key(client: AsyncClient, event: MegolmEvent) -> None:
    """nio asks the bot's own devices and records the request (a forwarded key is accepted
    only for a session asked for); the sender's devices get the same request."""
    try:
        await client.request_room_key(event)
    except LocalProtocolError:
        return  # already requested for this session
    if event.sender != client.user_id:
        await client.to_device(event.as_key_request(event.sender, client.device_id))


class DecryptionWarnings(logging.Filter):
    """nio's warning for each event it holds no room key for, as one line per room and sync.

    A room joined with encrypted history logs one warning per message from before the bot
    was invited (their keys were never meant for it): dozens of lines that bury the ones that
    matter. Those that matter, events addressed to the bot, are logged one by one by
    ``WaitingForKeys.add``. Installed on nio's crypto logger by the interface; ``flush`` after
    each sync writes the summary.
    """

    def __init__(self) -> None:
        super().__init__()
        self._rooms: dict[str, int] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        found = _NO_SESSION.match(record.getMessage())
        if found is None:
            return True
        room_id = found.group(1)
        self._rooms[room_id] = self._rooms.get(room_id, 0) + 1
        return False

    def flush(self) -> None:
        rooms, self._rooms = self._rooms, {}
        for room_id, count in rooms.items():
            log.info("[%s] %d encrypted event(s) could not be decrypted: this device holds no "
                     "key for them (history from before the bot was invited, or a key still "
                     "to come; messages for the bot are logged one by one)", room_id, count)
