"""Replies into Matrix rooms: the router's outbox hands them over, the homeserver must take them.

``send`` returns True only once the homeserver accepted a message, so the outbox keeps
whatever it could not take and the interface re-sends it, in order, when the sync loop
recovers. A send refused while syncing still works (a 502 from a proxy, a rate limit) is
retried by itself after a growing pause; one refused for good (the bot may not post there,
the room is gone) is logged and dropped, so the replies after it still go out. Each reply's
transaction id comes from its stored message id, so the homeserver drops a resend of a
message it already has.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from nio import LocalProtocolError, RoomSendError

from ganglion.config_matrix import MatrixConfig
from ganglion.interfaces.matrix.outbound import (
    TypingNotices,
    final_edit,
    progress_content,
    replacement,
    reply_contents,
)
from ganglion.interfaces.matrix.receipts import Receipts
from ganglion.interfaces.matrix.relations import names_target, relates_to
from ganglion.interfaces.matrix.session import TimedClient, http_status, retryable
from ganglion.interfaces.matrix.stream import Streams
from ganglion.messages import Outbound, OutKind, Role, ThreadId, matrix_room_of
from ganglion.render import MarkdownRenderer
from ganglion.router import Router

log = logging.getLogger(__name__)

TYPING_MS = 30_000
"""How long the homeserver shows a typing notice; TypingNotices renews it before then."""
RECEIVED_KEPT = 1000
RETRY_FIRST = 0.5
"""Seconds before a refused send is first tried again."""


class RoomSender:
    def __init__(self, router: Router, renderer: MarkdownRenderer, config: MatrixConfig,
                 store_path: Path, spawn: Callable[[Coroutine[Any, Any, Any]], None], *,
                 tx_prefix: str) -> None:
        self.router = router
        self.renderer = renderer
        self.show_tool_calls = config.show_tool_calls
        self.tx_prefix = tx_prefix
        self._spawn = spawn
        self.client: TimedClient | None = None
        """The interface's client while it is connected; None while the homeserver is away."""
        self.retry_max = 15.0
        """Seconds before a refused send is tried again (doubling up to this)."""
        self.typing = TypingNotices(self._set_typing)
        self.streams = (Streams(self._show_progress, config.edit_interval_seconds, store_path,
                                tx_prefix) if config.streaming else None)
        self.receipts = Receipts(lambda: self.client, config.ack_reaction, tx_prefix, spawn)
        self._received: dict[int, float] = {}
        self._retrying: set[ThreadId] = set()
        self._retry_delay: dict[ThreadId, float] = {}
        self.reply_mode = "never"
        """``matrix.reply_mode`` (``relations``)."""
        self.event_of: Callable[[int], Awaitable[str | None]] | None = None
        """The Matrix event id of an inbox row: the message an answer answers."""

    async def stop(self) -> None:
        """Typing notices, edits and receipts in flight are cancelled (best effort all)."""
        await asyncio.gather(self.typing.stop(), self.receipts.stop(),
                             *([self.streams.stop()] if self.streams else []))

    def received(self, inbox_id: int, at: float) -> None:
        """When the event behind inbox row ``inbox_id`` reached the daemon (for the timing)."""
        self._received[inbox_id] = at
        while len(self._received) > RECEIVED_KEPT:
            del self._received[next(iter(self._received))]

    async def send(self, out: Outbound) -> bool:
        """STATE turns into typing notices; DELTA and RESET into an answer's early post and
        its edits (``matrix.streaming``); MESSAGE (and TOOL if shown) into room messages."""
        if out.kind in (OutKind.STATE, OutKind.DELTA, OutKind.RESET):
            if out.kind is OutKind.STATE:
                self.typing.update(out.thread_id, out.text)
                if out.text in ("idle", "error") and out.reply_to:
                    self.receipts.done(out.reply_to)
            if self.streams is not None:
                self.streams.update(out)
            return True
        if out.kind is not OutKind.MESSAGE and not (
            out.kind is OutKind.TOOL and self.show_tool_calls
        ):
            return True
        if out.role is Role.USER or not out.text.strip():
            return True  # the user's own words are already in the room
        client = self.client
        if client is None:
            log.debug("[%s] reply %d waits: not connected", out.thread_id, out.message_id)
            return False
        started = time.monotonic()
        encrypting = 0.0
        early = None
        if self.streams is not None and out.kind is OutKind.MESSAGE and out.role is Role.ASSISTANT:
            early = await self.streams.early_post(out)
        if early is not None:  # the early post (posted with the relation) edited: the rest new
            contents = final_edit(out, self.renderer, early)
            contents[1:] = [self._later_content(out.thread_id, c) for c in contents[1:]]
        else:
            contents = reply_contents(out, self.renderer)
            contents[0] = await self.first_content(out.thread_id, out.reply_to, contents[0])
            contents[1:] = [self._later_content(out.thread_id, c) for c in contents[1:]]
        for i, content in enumerate(contents):
            tx_id = f"{self.tx_prefix}-{out.message_id}" + (f"-{i}" if i else "")
            sent = await self._send_one(client, out, content, tx_id)
            if sent is not True:
                return sent is None  # None: dropped for good, the next replies may go
            encrypting += client.encrypt_seconds.pop(matrix_room_of(out.thread_id), 0.0)
        done = time.monotonic()
        self._retry_delay.pop(out.thread_id, None)
        if out.kind is OutKind.MESSAGE and out.reply_to:
            self.receipts.done(out.reply_to)
            if self.streams is not None:
                await self.streams.delivered(out)
        arrived = self._received.pop(out.reply_to, None)
        if arrived is not None:
            log.debug("[%s] reply sent %.1f ms after its event arrived (daemon %.1f ms with "
                      "encryption %.1f ms, homeserver send %.1f ms)", out.thread_id,
                      (done - arrived) * 1000, (started - arrived + encrypting) * 1000,
                      encrypting * 1000, (done - started - encrypting) * 1000)
        return True

    async def first_content(self, thread_id: ThreadId, answering: int,
                            content: dict[str, Any]) -> dict[str, Any]:
        """The content of an answer's first event (the early post of a streamed answer, else
        its first part), with what it relates to (``relations``): its thread, the message it
        answers."""
        answers = await self._answered(thread_id, answering)
        relation = self._relation(thread_id, answers, first=True)
        return content if relation is None else {**content, "m.relates_to": relation}

    def _later_content(self, thread_id: ThreadId, content: dict[str, Any]) -> dict[str, Any]:
        """A later part of a long answer: a new event, in the answer's thread if it has one
        (no reply: only the first part answers)."""
        relation = self._relation(thread_id, None, first=False)
        return content if relation is None else {**content, "m.relates_to": relation}

    async def _show_progress(self, thread_id: ThreadId, answering: int, text: str,
                             event_id: str | None, edit: int) -> str | None:
        """An answer in progress: its early post (``event_id`` None) or an edit of it; the
        id of the event the homeserver took, None when it did not (best effort)."""
        client = self.client
        if client is None:
            return None
        content = progress_content(text, self.renderer)
        if event_id is None:
            content = await self.first_content(thread_id, answering, content)
            # From the inbox id: a run of the same turn after a crash gets this event back.
            tx_id = self.streams.key(answering) if self.streams and answering else None
        else:
            content, tx_id = replacement(content, event_id), None
        try:
            resp = await client.room_send(matrix_room_of(thread_id), "m.room.message", content,
                                          tx_id=tx_id, ignore_unverified_devices=True)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.info("[%s] answer in progress not shown (%s: %s)", thread_id,
                     type(err).__name__, err)
            return None
        client.encrypt_seconds.pop(matrix_room_of(thread_id), None)
        if isinstance(resp, RoomSendError):
            log.info("[%s] answer in progress not shown: %s", thread_id, resp)
            return None
        log.debug("[%s] answer in progress %s as %s", thread_id,
                  "posted" if event_id is None else f"edited ({edit + 1})", resp.event_id)
        shown: str = resp.event_id
        return shown

    async def _send_one(self, client: TimedClient, out: Outbound, content: dict[str, Any],
                        tx_id: str) -> bool | None:
        """True: taken. False: to be tried again. None: refused for good (dropped)."""
        try:
            resp = await client.room_send(matrix_room_of(out.thread_id), "m.room.message", content,
                                          tx_id=tx_id, ignore_unverified_devices=True)
        except asyncio.CancelledError:
            raise
        except LocalProtocolError as err:  # nio knows no such room: the bot is not in it
            log.error("[%s] reply %d dropped: %s", out.thread_id, out.message_id, err)
            self._retry_delay.pop(out.thread_id, None)
            return None
        except Exception as err:
            log.warning("[%s] reply %d not sent (%s: %s); it stays queued", out.thread_id,
                        out.message_id, type(err).__name__, err)
            self._retry_later(out.thread_id)
            return False
        if isinstance(resp, RoomSendError):
            status = http_status(resp)
            if not retryable(status) and status != 401:  # 401: the sync loop's matter
                # The bot may not post here, or the message is too large: trying again
                # would only hold back the replies after it.
                log.error("[%s] reply %d refused by the homeserver (%s); dropped",
                          out.thread_id, out.message_id, resp)
                self._retry_delay.pop(out.thread_id, None)
                return None
            log.warning("[%s] reply %d refused by the homeserver (%s); it stays queued",
                        out.thread_id, out.message_id, resp)
            self._retry_later(out.thread_id)
            return False
        log.debug("[%s] reply %d sent as %s", out.thread_id, out.message_id, resp.event_id)
        return True

    async def notice_now(self, room_id: str, text: str) -> None:
        """A notice sent directly, not through the outbox (which may be what is failing)."""
        if self.client is None:
            return
        content = {"msgtype": "m.notice", "body": text, "m.mentions": {}}
        try:
            await self.client.room_send(room_id, "m.room.message", content,
                                        ignore_unverified_devices=True)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.warning("[%s] could not send a notice: %s", room_id, err)

    async def _answered(self, thread_id: ThreadId, answering: int) -> str | None:
        """The event id of the message (inbox row ``answering``) an answer answers, looked up
        only when its relation names it (``relations``)."""
        if not answering or self.event_of is None or not names_target(
                thread_id, self._others(thread_id), self.reply_mode):
            return None
        return await self.event_of(answering)

    def _relation(self, thread_id: ThreadId, answers: str | None,
                  first: bool) -> dict[str, Any] | None:
        return relates_to(thread_id, answers, self._others(thread_id), self.reply_mode,
                          first=first)

    def _others(self, thread_id: ThreadId) -> int:
        """The room's joined members besides the bot."""
        room = self.client.rooms.get(matrix_room_of(thread_id)) if self.client else None
        return room.joined_count - 1 if room is not None else 0

    def _retry_later(self, thread_id: ThreadId) -> None:
        """Deliver this room again after a growing pause (reset by a success; the end of an
        outage re-sends everything anyway)."""
        if thread_id in self._retrying:
            return
        delay = self._retry_delay.get(thread_id, RETRY_FIRST)
        self._retry_delay[thread_id] = min(delay * 2, self.retry_max)
        self._retrying.add(thread_id)

        async def retry() -> None:
            try:
                await asyncio.sleep(delay)
            finally:
                self._retrying.discard(thread_id)
            await self.router.deliver(thread_id)

        self._spawn(retry())

    async def _set_typing(self, thread_id: ThreadId, on: bool) -> None:
        if self.client is None:
            return
        try:
            await self.client.room_typing(matrix_room_of(thread_id), typing_state=on,
                                          timeout=TYPING_MS)
        except asyncio.CancelledError:
            raise
        except Exception as err:
            log.debug("[%s] typing notice not sent: %s", thread_id, err)
