"""One browser tab's side of the web interface: a bounded send queue and the writer task that
drains it into the tab's WebSocket, so that what the server publishes never waits for a tab."""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import suppress
from typing import Any

from aiohttp import web

from ganglion.messages import ThreadId

log = logging.getLogger(__name__)

SEND_QUEUE_FRAMES = 256
"""Frames a tab may have waiting for its socket. A tab further behind cannot keep up: it is
closed, and resumes on reconnect from the transcript and the partial answer."""
CLOSE_TOO_SLOW = 1013  # "try again later": the page reconnects by itself
CLOSE_GRACE = 1.0
"""Seconds a slow tab has to take its close frame before its connection is cut."""


class Tab:
    """One connected WebSocket of one thread, with its own bounded send queue drained by its
    own writer task: putting a frame never waits for the socket, so a slow tab slows no one
    (not a turn's stream, not the thread's other tabs)."""

    def __init__(self, ws: web.WebSocketResponse, thread_id: ThreadId,
                 transport: asyncio.Transport | None) -> None:
        self.ws = ws
        self.thread_id = thread_id
        self._transport = transport
        self._queue: asyncio.Queue[str] = asyncio.Queue(SEND_QUEUE_FRAMES)
        self._early: list[str] | None = []
        """Frames put before ``ready`` (the tab is registered before its transcript is read,
        so that it misses nothing): they follow ``ready``, in order."""
        self._writer: asyncio.Task[None] | None = None
        self._closer: asyncio.Task[None] | None = None

    def put(self, frame: dict[str, Any]) -> bool:
        """Queue ``frame`` for the socket. False if the tab is closing, or could not keep up
        (then it is closed)."""
        if self._closer is not None or self.ws.closed:
            return False
        data = json.dumps(frame)
        if self._early is not None:
            if len(self._early) < SEND_QUEUE_FRAMES:
                self._early.append(data)
                return True
        else:
            with suppress(asyncio.QueueFull):
                self._queue.put_nowait(data)
                return True
        log.warning("[%s] web: a tab cannot keep up (%d frames waiting); closing it",
                    self.thread_id, SEND_QUEUE_FRAMES)
        self._closer = asyncio.create_task(self._close_slow(), name=f"tab-close-{self.thread_id}")
        return False

    def start(self, ready: dict[str, Any]) -> None:
        """Write ``ready`` first, then what was put meanwhile, then the queue as it fills."""
        first = [json.dumps(ready), *(self._early or [])]
        self._early = None
        if self._closer is None:
            self._writer = asyncio.create_task(self._write(first),
                                               name=f"tab-writer-{self.thread_id}")

    async def stop(self) -> None:
        """At disconnect and at the server's stop: end the writer; let a close in progress
        finish (it is bounded by CLOSE_GRACE)."""
        if self._writer is not None:
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        if self._closer is not None:
            await asyncio.gather(self._closer, return_exceptions=True)

    async def _write(self, first: list[str]) -> None:
        try:
            for data in first:
                await self.ws.send_str(data)
            while True:
                await self.ws.send_str(await self._queue.get())
        except (ConnectionError, RuntimeError):
            return  # the socket is gone; the tab's reader sees it too and leaves

    async def _close_slow(self) -> None:
        if self._writer is not None:  # it may be stuck writing to a full socket
            self._writer.cancel()
            await asyncio.gather(self._writer, return_exceptions=True)
        try:
            async with asyncio.timeout(CLOSE_GRACE):
                await self.ws.close(code=CLOSE_TOO_SLOW, message=b"too slow to keep up")
        except TimeoutError:
            if self._transport is not None:  # it does not read even its close: cut it off
                self._transport.abort()
