"""The web edge's guards, checked before a request reaches the chat: which ``Host`` and
``Origin`` may talk to the server, the headers every response carries, and a throttle on
token guessing.

Why each exists: a loopback-bound server answers only loopback ``Host`` names (DNS
rebinding: a page of evil.example resolving to 127.0.0.1 is same-origin with itself); a
WebSocket must come from the page's own ``Origin`` (cross-site WebSocket hijacking); the
Content-Security-Policy allows no inline script and nothing from elsewhere (model output is
rendered as HTML); repeated wrong tokens from one address are slowed down.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from aiohttp import web
from aiohttp.typedefs import Middleware

from ganglion.config import WebConfig

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Throttle:
    """Slows down token guessing: after ``free`` failures from one address, each attempt from
    it waits ``min(2**(n - free), cap)`` seconds, one attempt at a time. A success resets it."""

    def __init__(self, free: int = 3, cap: float = 10.0, max_addresses: int = 10_000) -> None:
        self.free = free
        self.cap = cap
        self.max_addresses = max_addresses
        self._failures: dict[str, int] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    def delay(self, addr: str) -> float:
        n = self._failures.get(addr, 0)
        return 0.0 if n < self.free else float(min(2 ** (n - self.free), self.cap))

    @asynccontextmanager
    async def attempt(self, addr: str) -> AsyncIterator[None]:
        if self.delay(addr) == 0:
            yield
            return
        # One attempt at a time per address, or parallel sockets would defeat the delay.
        async with self._locks.setdefault(addr, asyncio.Lock()):
            await asyncio.sleep(self.delay(addr))
            yield

    def failed(self, addr: str) -> int:
        n = self._failures.pop(addr, 0) + 1
        self._failures[addr] = n  # re-inserted: the dict stays in least-recent order
        while len(self._failures) > self.max_addresses:
            oldest = next(iter(self._failures))
            del self._failures[oldest]
            self._locks.pop(oldest, None)
        return n

    def succeeded(self, addr: str) -> None:
        self._failures.pop(addr, None)
        lock = self._locks.get(addr)
        if lock is not None and not lock.locked():
            del self._locks[addr]


def is_loopback_host(host_header: str) -> bool:
    """True for ``localhost``, ``*.localhost`` and loopback addresses, with or without a port."""
    host = host_header.strip().lower()
    if host.startswith("["):
        name = host[1 : host.find("]")] if "]" in host else host[1:]
    else:
        name = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    name = name.rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


class Guard:
    """The Host and Origin rules of one server, from its config."""

    def __init__(self, config: WebConfig) -> None:
        self._loopback_only = config.is_loopback
        self._allowed_origins = {o.rstrip("/").lower() for o in config.allowed_origins}

    def host_refused(self, request: web.Request) -> str | None:
        """Why a request must be refused for its Host (DNS rebinding), or None."""
        host = request.headers.get("Host")
        if self._loopback_only and host is not None and not is_loopback_host(host):
            return "this server only answers to a loopback Host (127.0.0.1 or localhost)"
        return None

    def origin_refused(self, request: web.Request) -> str | None:
        """Why a WebSocket upgrade must be refused for its Origin, or None."""
        origin = request.headers.get("Origin")
        if origin is None:
            return None  # not a browser; the token is still required
        origin = origin.rstrip("/").lower()
        host = request.headers.get("Host")
        if host is not None and origin == f"{request.scheme}://{host}".lower():
            return None
        if origin in self._allowed_origins:
            return None
        return "cross-origin WebSocket refused (add the origin to web.allowed_origins)"

    def middleware(self) -> Middleware:
        """Refuses every request (page, files, WebSocket) whose Host this server must not serve."""

        @web.middleware
        async def host_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            reason = self.host_refused(request)
            if reason is not None:
                log.warning("web: refused %s %s for Host %r", request.method, request.path,
                            request.headers.get("Host"))
                raise web.HTTPForbidden(text=reason)
            return await handler(request)

        return host_guard


async def add_security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in SECURITY_HEADERS.items():
        response.headers.setdefault(name, value)
