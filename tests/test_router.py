"""The router: final messages leave the outbox once each, in order, whoever asks to deliver."""

from __future__ import annotations

import asyncio
from pathlib import Path

from ganglion.messages import Outbound, ThreadId
from ganglion.router import Router
from ganglion.storage.db import Database
from ganglion.storage.history import History, NewMessage
from ganglion.storage.outbox import Outbox

THREAD = ThreadId("web_" + "1" * 32)


class SlowTab:
    """An interface whose sends take a moment, and which may be 'closed' (refuses sends)."""

    name = "slow"

    def __init__(self) -> None:
        self.sent: list[str] = []
        self.open = True

    def owns(self, thread_id: ThreadId) -> bool:
        return thread_id == THREAD

    async def send(self, out: Outbound) -> bool:
        await asyncio.sleep(0.01)
        if not self.open:
            return False
        self.sent.append(out.text)
        return True

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


async def make(tmp_path: Path) -> tuple[Database, History, Router, SlowTab]:
    db = await Database.open(tmp_path / "r.db")
    history = History(db)
    router = Router(history, Outbox(db))
    tab = SlowTab()
    router.register(tab)
    return db, history, router, tab


async def test_concurrent_deliveries_send_each_message_once_in_order(tmp_path: Path) -> None:
    db, history, router, tab = await make(tmp_path)
    tab.open = False
    for i in range(5):
        await history.finish_turn(THREAD, None, [NewMessage("assistant", f"m{i}", deliver=True)])
    await router.deliver(THREAD)
    assert tab.sent == []  # kept while nobody is there
    tab.open = True
    await asyncio.gather(*(router.deliver(THREAD) for _ in range(6)))
    assert tab.sent == [f"m{i}" for i in range(5)]
    assert await router.outbox.pending(THREAD) == []
    await db.close()


async def test_broadcast_reaches_the_thread_and_is_kept_when_closed(tmp_path: Path) -> None:
    db, history, router, tab = await make(tmp_path)
    tab.open = False
    await router.broadcast("while away", THREAD)
    tab.open = True
    await router.deliver_all()
    assert tab.sent == ["while away"]
    assert [m.role for m in await history.transcript(THREAD)] == ["notice"]
    await db.close()
