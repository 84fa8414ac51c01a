"""A small WebSocket client of the web UI's protocol, for tests and benchmarks."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

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

    async def request(self, frame: dict[str, Any]) -> dict[str, Any]:
        """Send a frame that carries an ``id`` and wait for its ack or error (returns it)."""
        assert self._ws is not None
        await self._ws.send_json(frame)
        while True:
            event = await self._receive(10)
            if event.get("type") in ("ack", "error") and event.get("id") == frame.get("id"):
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


class RawTab:
    """A tab on a bare socket that reads only when told to: with a small receive buffer it
    stands for a browser that cannot keep up (the server's writes to it fill every buffer)."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self._buffer = b""

    @classmethod
    async def connect(cls, url: str, token: str, thread_id: str,
                      receive_buffer: int = 4096) -> RawTab:
        """Upgrade to a WebSocket and say hello; reads nothing after the upgrade's answer."""
        loop = asyncio.get_running_loop()
        parts = urlsplit(url)
        host, port = parts.hostname or "127.0.0.1", parts.port or 80
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)  # before connect
        sock.setblocking(False)
        await loop.sock_connect(sock, (host, port))
        tab = cls(sock)
        key = base64.b64encode(os.urandom(16)).decode()
        await loop.sock_sendall(sock, (
            f"GET /ws HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            f"Sec-WebSocket-Version: 13\r\nOrigin: {url.rstrip('/')}\r\n\r\n").encode())
        head = await tab._until(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 101"), head
        hello = {"type": "hello", "token": token, "thread_id": thread_id}
        await loop.sock_sendall(sock, _client_frame(json.dumps(hello).encode()))
        return tab

    async def frame(self) -> tuple[int, bytes] | None:
        """The next frame the server sent (opcode, payload); None once the connection ended."""
        try:
            b0, b1 = await self._exactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await self._exactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await self._exactly(8), "big")
            return b0 & 0x0F, await self._exactly(n)
        except (ConnectionError, EOFError):
            return None

    def close(self) -> None:
        self.sock.close()

    async def _recv(self) -> None:
        data = await asyncio.get_running_loop().sock_recv(self.sock, 65536)
        if not data:
            raise EOFError("the server closed the connection")
        self._buffer += data

    async def _until(self, end: bytes) -> bytes:
        while end not in self._buffer:
            await self._recv()
        head, self._buffer = self._buffer.split(end, 1)
        return head

    async def _exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            await self._recv()
        data, self._buffer = self._buffer[:n], self._buffer[n:]
        return data


def _client_frame(payload: bytes, opcode: int = 0x1) -> bytes:
    """One final, masked frame (a client must mask what it sends)."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = bytes([0x80 | opcode, 0x80 | n])
    elif n < 1 << 16:
        head = bytes([0x80 | opcode, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x80 | opcode, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


Event = dict[str, Any]


async def until(chat: ChatClient, pred: Callable[[Event], bool], timeout: float = 10) -> Event:
    """The first event of ``chat`` matching ``pred`` (the others are dropped)."""
    while True:
        event = await chat.next_event(timeout)
        if event.get("type") == "_closed":
            raise ConnectionError(event)
        if pred(event):
            return event


def message(role: str, contains: str = "") -> Callable[[Event], bool]:
    """A final message of ``role`` holding ``contains``."""
    return lambda e: e.get("type") == "message" and e["role"] == role and contains in e["text"]
