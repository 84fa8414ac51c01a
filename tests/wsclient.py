"""A small WebSocket client of the web UI's protocol, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import json
import secrets
from typing import Any

import aiohttp


class ChatClient:
    """One browser tab, as the protocol sees it: hello, send, and the events that come back."""

    def __init__(self, url: str, token: str, thread_id: str | None = None) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.thread_id = thread_id or f"web_{secrets.token_hex(16)}"
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.ready: dict[str, Any] = {}
        self._session: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None

    async def connect(self) -> dict[str, Any]:
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(f"{self.url}/ws", origin=self.url)
        await self._ws.send_json({"type": "hello", "token": self.token,
                                  "thread_id": self.thread_id})
        self.ready = await self._ws.receive_json(timeout=10)
        assert self.ready.get("type") == "ready", self.ready
        return self.ready

    async def send(self, text: str, client_id: str | None = None) -> dict[str, Any]:
        """Send a message and wait for its ack (returns the ack)."""
        assert self._ws is not None
        cid = client_id or secrets.token_hex(8)
        await self._ws.send_json({"type": "send", "id": cid, "text": text})
        while True:
            event = await self._receive(10)
            if event.get("type") in ("ack", "error") and event.get("id") == cid:
                return event
            self.events.put_nowait(event)  # keep for the caller, in order

    async def send_raw(self, data: Any) -> None:
        assert self._ws is not None
        await self._ws.send_json(data)

    async def next_event(self, timeout: float = 10) -> dict[str, Any]:
        if not self.events.empty():
            return self.events.get_nowait()
        return await self._receive(timeout)

    async def _receive(self, timeout: float) -> dict[str, Any]:
        assert self._ws is not None
        msg = await self._ws.receive(timeout=timeout)
        if msg.type != aiohttp.WSMsgType.TEXT:
            return {"type": "_closed", "code": self._ws.close_code, "msg_type": str(msg.type)}
        event: dict[str, Any] = json.loads(msg.data)
        return event

    async def events_so_far(self) -> list[dict[str, Any]]:
        """Every event the server sent this tab until now, without waiting for time: a frame
        it answers at once with no other effect (an unknown type: a ``bad_frame`` error)
        goes round, and what came before its answer was sent before. Nothing makes the tab's
        conversation active."""
        await self.send_raw({"type": "sync"})
        got = []
        while (event := await self.next_event()).get("code") != "bad_frame":
            got.append(event)
        return got

    async def reply(self, timeout: float = 10) -> dict[str, Any]:
        """The next final message of the assistant or the system."""
        while True:
            event = await self.next_event(timeout)
            if event.get("type") == "message" and event.get("role") in ("assistant", "system"):
                return event
            if event.get("type") == "_closed":
                raise ConnectionError(f"socket closed: {event}")

    async def ask(self, text: str, timeout: float = 10) -> dict[str, Any]:
        ack = await self.send(text)
        assert ack["type"] == "ack", ack
        return await self.reply(timeout)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
