"""/status and /metrics over HTTP: on the web port behind the token, and /metrics alone on an
optional loopback listener (``web.metrics_bind``) for a local scraper without one.

The token comes as ``Authorization: Bearer <token>`` (a scraper's and curl's way; never in
the URL, which proxies log); wrong ones are throttled per address like the WebSocket's
logins, and a browser request from another site is refused by its ``Origin``. What the
answers hold is made elsewhere (``ganglion/status.py``, ``ganglion/metrics.py``): this
module only knows the callables the composition root hands it.
"""

from __future__ import annotations

import hmac
import logging
import math
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ganglion.config_web import WebConfig, split_bind
from ganglion.errors import StartupError
from ganglion.interfaces.web_guard import Guard, Handler, Throttle, add_security_headers

log = logging.getLogger(__name__)

Status = Callable[[], Awaitable[dict[str, Any]]]
Exposition = Callable[[], bytes]
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StatusRoutes:
    """The token-checked /status and /metrics of the web port."""

    def __init__(self, config: WebConfig, token: str, status: Status,
                 exposition: Exposition) -> None:
        self._token = token.encode()
        self._guard = Guard(config)
        self._throttle = Throttle()
        self._status = status
        self._exposition = exposition

    def add_to(self, app: web.Application) -> None:
        """Called by the web interface as it builds its routes."""
        app.router.add_get("/status", self._checked(self._get_status))
        app.router.add_get("/metrics", self._checked(self._get_metrics))

    def _checked(self, handler: Handler) -> Handler:
        async def checked(request: web.Request) -> web.StreamResponse:
            self._check(request)
            return await handler(request)
        return checked

    def _check(self, request: web.Request) -> None:
        """Raises the refusal: a cross-site browser (403), a missing or wrong token (401), a
        throttled address (429). The right token always gets in."""
        remote = request.remote or "unknown"
        reason = self._guard.origin_refused(request)
        if reason is not None:
            log.warning("web: refused %s from %s: %s", request.path, remote, reason)
            raise web.HTTPForbidden(text="cross-origin request refused")
        scheme, _, presented = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(
                presented.strip().encode("utf-8", "replace"), self._token):
            self._throttle.succeeded(remote)
            return
        if (wait := self._throttle.retry_after(remote)) > 0:
            raise web.HTTPTooManyRequests(
                text="too many wrong tokens; retry later",
                headers={"Retry-After": str(max(1, math.ceil(wait)))})
        n = self._throttle.failed(remote)
        log.warning("web: refused %s from %s: wrong or missing token (failure %d in a row)",
                    request.path, remote, n)
        raise web.HTTPUnauthorized(
            text="send the web token as 'Authorization: Bearer <token>'",
            headers={"WWW-Authenticate": 'Bearer realm="ganglion"'})

    async def _get_status(self, request: web.Request) -> web.StreamResponse:
        return web.json_response(await self._status(),
                                 headers={"Cache-Control": "no-store"})

    async def _get_metrics(self, request: web.Request) -> web.StreamResponse:
        return metrics_response(self._exposition)


def metrics_response(exposition: Exposition) -> web.Response:
    return web.Response(body=exposition(), headers={"Content-Type": METRICS_TYPE,
                                                    "Cache-Control": "no-store"})


class MetricsListener:
    """/metrics alone, without token, on a loopback address (the config refuses any other).

    Its Host check still applies: a web page that rebinds its name to 127.0.0.1 must not
    read the metrics through the visitor's browser.
    """

    def __init__(self, bind: str, exposition: Exposition) -> None:
        self.host, self.port = split_bind(bind)
        self._exposition = exposition
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        app = web.Application(middlewares=[
            Guard(WebConfig(host=self.host, enabled=False)).middleware()])
        app.on_response_prepare.append(add_security_headers)

        async def get_metrics(request: web.Request) -> web.Response:
            return metrics_response(self._exposition)

        app.router.add_get("/metrics", get_metrics)
        runner = web.AppRunner(app, shutdown_timeout=0.5)
        await runner.setup()
        try:
            await web.TCPSite(runner, self.host, self.port).start()
        except OSError as err:
            await runner.cleanup()
            raise StartupError(
                f"metrics: cannot listen on {self.host}:{self.port}: {err.strerror}; set "
                "web.metrics_bind to a free loopback port (or \"\" for none)") from None
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("metrics listening on http://%s:%d/metrics", self.host, self.port)

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
