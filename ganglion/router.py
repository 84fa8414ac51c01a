"""The router: Outbound events to the interface owning the thread; final messages via the outbox."""

from __future__ import annotations

import asyncio
import logging
from typing import Protocol

from ganglion.messages import Outbound, OutKind, Role, ThreadId
from ganglion.storage.history import History, NewMessage, StoredMessage
from ganglion.storage.outbox import Outbox

log = logging.getLogger(__name__)


class Interface(Protocol):
    """What every interface (web, Matrix) offers the router. Translate at the edge, nothing more."""

    name: str

    def owns(self, thread_id: ThreadId) -> bool:
        """True for the threads this interface carries (by id shape: ``web_`` or ``!room``)."""
        ...

    async def send(self, out: Outbound) -> bool:
        """Deliver one event, without waiting on a slow reader. For MESSAGE/TOOL: True only
        once the user's side has it or will show it for sure (a homeserver accepted it; a
        connected tab queued it: a tab closed before writing it reads it in its transcript
        when it reconnects); False keeps it in the outbox."""
        ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


ROLE_OF = {
    "assistant": Role.ASSISTANT,
    "user": Role.USER,
    "notice": Role.SYSTEM,
    "tool": Role.TOOL,
}


def outbound_of(msg: StoredMessage) -> Outbound:
    """The durable message as an Outbound MESSAGE (or TOOL) event."""
    role = ROLE_OF.get(msg.role, Role.SYSTEM)
    kind = OutKind.TOOL if role is Role.TOOL else OutKind.MESSAGE
    return Outbound(
        msg.thread_id, kind, msg.content, role=role, message_id=msg.id,
        reply_to=msg.inbox_id or 0,
    )


class Router:
    def __init__(self, history: History, outbox: Outbox) -> None:
        self.history = history
        self.outbox = outbox
        self._interfaces: list[Interface] = []
        # One lock per thread while deliveries for it are running or waiting (with the count
        # of those), so two deliveries never interleave and idle threads hold no lock.
        self._delivery_locks: dict[ThreadId, tuple[asyncio.Lock, int]] = {}

    def register(self, iface: Interface) -> None:
        self._interfaces.append(iface)

    def owner(self, thread_id: ThreadId) -> Interface | None:
        for iface in self._interfaces:
            if iface.owns(thread_id):
                return iface
        return None

    async def publish(self, out: Outbound) -> None:
        """An ephemeral event (delta, state): best effort, never stored. It must not wait on
        a slow reader: a turn publishes while it holds its model endpoint's slot."""
        iface = self.owner(out.thread_id)
        if iface is not None:
            await iface.send(out)

    async def deliver(self, thread_id: ThreadId) -> None:
        """Send this thread's undelivered final messages, in order; stop at the first refusal."""
        iface = self.owner(thread_id)
        if iface is None:
            return
        lock, users = self._delivery_locks.get(thread_id, (asyncio.Lock(), 0))
        self._delivery_locks[thread_id] = (lock, users + 1)
        try:
            async with lock:
                for outbox_id, msg in await self.outbox.pending(thread_id):
                    if not await iface.send(outbound_of(msg)):
                        break
                    await self.outbox.mark_delivered([outbox_id])
        finally:
            lock, users = self._delivery_locks[thread_id]
            if users == 1:
                del self._delivery_locks[thread_id]
            else:
                self._delivery_locks[thread_id] = (lock, users - 1)

    async def deliver_all(self) -> None:
        """At start and after an interface reconnects: everything still waiting."""
        for thread_id in await self.outbox.threads_with_pending():
            await self.deliver(thread_id)

    async def broadcast(self, text: str, thread_id: ThreadId, role: str = "notice") -> None:
        """Store ``text`` as a message of ``thread_id`` and deliver it to every tab or room.

        A thread with no connected tab keeps it until the tab comes back.
        """
        await self.history.finish_turn(
            thread_id, None, [NewMessage(role, text, in_context=False, deliver=True)]
        )
        await self.deliver(thread_id)
