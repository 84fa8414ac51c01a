"""/status and /metrics over HTTP: on the web port behind the token, and /metrics alone on an
optional loopback listener (``web.metrics_bind``) for a local scraper without one.

The token comes as ``Authorization: Bearer <token>`` (a scraper's and curl's way; never in
the URL, which proxies log), checked by the web interface's one check (``web_guard``:
the Origin, the token, the throttle the WebSocket's logins count in). What the
answers hold is made elsewhere (``ganglion/status.py``, ``ganglion/metrics.py``): this
module only knows the callables the composition root hands it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from ganglion.config_web import WebConfig, split_bind
from ganglion.errors import StartupError
from ganglion.interfaces.web_guard import BearerCheck, Guard, Handler, add_security_headers

log = logging.getLogger(__name__)

Status = Callable[[], Awaitable[dict[str, Any]]]
Exposition = Callable[[], bytes]
METRICS_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class StatusRoutes:
    """The token-checked /status and /metrics of the web port."""

    def __init__(self, status: Status, exposition: Exposition) -> None:
        self._status = status
        self._exposition = exposition

    def add_to(self, app: web.Application, check: BearerCheck) -> None:
        """Called by the web interface as it builds its routes, with its token check."""

        def checked(handler: Handler) -> Handler:
            async def guarded(request: web.Request) -> web.StreamResponse:
                return check(request) or await handler(request)
            return guarded

        app.router.add_get("/status", checked(self._get_status))
        app.router.add_get("/metrics", checked(self._get_metrics))

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
