"""The web edge's guards, checked before a request reaches the chat: which ``Host`` and
``Origin`` may talk to the server, the headers every response carries, and a throttle on
token guessing.

Why each exists: a loopback-bound server answers only loopback ``Host`` names (DNS
rebinding: a page of evil.example resolving to 127.0.0.1 is same-origin with itself); a
WebSocket must come from the page's own ``Origin`` (cross-site WebSocket hijacking); the
Content-Security-Policy allows no inline script and nothing from elsewhere (model output is
rendered as HTML); after repeated wrong tokens from one address, its further wrong ones are
turned away at once for a while, with the time to wait (the right token always gets in).
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import math
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from ganglion.config_web import WebConfig

log = logging.getLogger(__name__)

SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        "img-src 'self' data: blob:; media-src blob:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Throttle:
    """Failed logins per address: after ``free`` failures in a row, the address is throttled
    for ``min(2**(n - free), cap)`` seconds after its n-th failure. A success starts it over.

    Nothing waits here: the caller checks the token first (a right one is never throttled,
    so the owner gets in during a storm of wrong ones, also behind a reverse proxy where every
    client is one address) and refuses a wrong one at once while ``retry_after`` is not 0,
    without counting it. An abandoned attempt holds nothing, and the memory is
    ``max_addresses`` entries at most (the least recently failed are forgotten first).
    """

    def __init__(self, free: int = 3, cap: float = 10.0, max_addresses: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.free = free
        self.cap = cap
        self.max_addresses = max_addresses
        self._clock = clock
        self._failures: dict[str, tuple[int, float]] = {}
        """Per address: failures in a row, and until when (clock) it is throttled."""

    def delay(self, failures: int) -> float:
        """How long an address is throttled after its ``failures``-th failure in a row."""
        return 0.0 if failures < self.free else float(min(2 ** (failures - self.free), self.cap))

    def retry_after(self, addr: str) -> float:
        """Seconds until a failed login from ``addr`` is checked again (0: not throttled)."""
        _, until = self._failures.get(addr, (0, 0.0))
        return max(0.0, until - self._clock())

    def failed(self, addr: str) -> int:
        """Count a checked failure; returns the failures in a row."""
        n = self._failures.pop(addr, (0, 0.0))[0] + 1
        # Re-inserted: the dict stays in least-recently-failed order.
        self._failures[addr] = (n, self._clock() + self.delay(n))
        while len(self._failures) > self.max_addresses:
            del self._failures[next(iter(self._failures))]
        return n

    def succeeded(self, addr: str) -> None:
        self._failures.pop(addr, None)

    def __len__(self) -> int:
        """Addresses remembered."""
        return len(self._failures)


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


BearerCheck = Callable[[web.Request], "web.Response | None"]
"""The refusal of an HTTP request that must carry the web token, or None when it may go on."""


def bearer_check(guard: Guard, token: bytes, throttle: Throttle) -> BearerCheck:
    """The one check of the token-checked HTTP endpoints (/status, /metrics, /upload):
    another site's browser refused by its Origin (403), the token as ``Authorization:
    Bearer``, checked before the throttle so the right one always gets in, a wrong one
    counted by the throttle the WebSocket's logins count in (401), or refused at once while
    its address waits (429)."""

    def refusal(request: web.Request) -> web.Response | None:
        remote = request.remote or "unknown"
        reason = guard.origin_refused(request)
        if reason is not None:
            log.warning("web: refused %s from %s: %s", request.path, remote, reason)
            return _refused(403, reason.replace("WebSocket", "request"))
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
                presented.strip().encode("utf-8", "replace"), token):
            throttle.succeeded(remote)
            return None
        if (wait := throttle.retry_after(remote)) > 0:
            return _refused(429, f"too many wrong tokens; retry in {math.ceil(wait)} s",
                            {"Retry-After": str(max(1, math.ceil(wait)))})
        n = throttle.failed(remote)
        log.warning("web: refused %s from %s: wrong or missing token (failure %d in a row)",
                    request.path, remote, n)
        return _refused(401, "send the web token as 'Authorization: Bearer <token>'",
                        {"WWW-Authenticate": 'Bearer realm="ganglion"'})

    return refusal


def _refused(status: int, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers)
