"""A pass-through HTTP proxy in front of the test Synapse that can refuse or hold requests.

For faults a whole homeserver outage does not show: sends refused while syncs work, one
page of history failing, a homeserver that takes the connection and never answers.
Everything else is forwarded as is (long-poll syncs included).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest_asyncio
from aiohttp import web

_HOP = {"host", "content-length", "transfer-encoding", "content-encoding", "connection"}


class HomeserverProxy:
    def __init__(self, upstream: str) -> None:
        self.upstream = upstream.rstrip("/")
        self.fail: re.Pattern[str] | None = None
        """Requests whose ``METHOD path`` matches get ``fail_status`` while this is set."""
        self.fail_status = 502
        self.fail_errcode: str | None = None
        """The Matrix error code of a refusal (by default from ``fail_status``)."""
        self.fail_times: int | None = None
        """If set, ``fail`` is cleared after this many refusals."""
        self.failed: list[str] = []
        self.hang: re.Pattern[str] | None = None
        """Requests matching this are held, unanswered, until ``release()``."""
        self.hung: list[str] = []
        self.seen: list[str] = []
        """``METHOD path`` of every request, in order (the benchmark counts them)."""
        self.well_known: dict[str, Any] | None = None
        """Served as /.well-known/matrix/client when set (Synapse here serves none)."""
        self._released = asyncio.Event()
        self._failures = asyncio.Condition()
        self.url = ""
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None),
                                              auto_decompress=False)
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"

    async def stop(self) -> None:
        # Long-polls in flight would hold the runner's clean-up for a minute: cut them.
        if self._session is not None:
            await self._session.close()
        if self._runner is not None:
            await self._runner.cleanup()

    def release(self) -> None:
        """Answer the held requests, and hold no more."""
        self.hang = None
        self._released.set()

    async def wait_failures(self, n: int, timeout: float = 20) -> None:
        """Until ``n`` requests in all were refused."""
        async with asyncio.timeout(timeout), self._failures:
            await self._failures.wait_for(lambda: len(self.failed) >= n)

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        line = f"{request.method} {request.path}"
        self.seen.append(line)
        if self.well_known is not None and request.path == "/.well-known/matrix/client":
            return web.json_response(self.well_known)
        if self.hang is not None and self.hang.search(line):
            self.hung.append(line)
            await self._released.wait()
        if self.fail is not None and self.fail.search(line):
            async with self._failures:
                self.failed.append(line)
                if self.fail_times is not None and len(self.failed) >= self.fail_times:
                    self.fail = None
                self._failures.notify_all()
            errcode = self.fail_errcode or (
                "M_FORBIDDEN" if self.fail_status == 403 else "M_UNKNOWN")
            return web.json_response({"errcode": errcode, "error": "proxy: refused"},
                                     status=self.fail_status)
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in _HOP}
        async with self._session.request(request.method, self.upstream + request.path_qs,
                                         headers=headers, data=await request.read()) as up:
            body = await up.read()
            out_headers = {k: v for k, v in up.headers.items() if k.lower() not in _HOP}
            if "content-encoding" in up.headers:
                out_headers["Content-Encoding"] = up.headers["content-encoding"]
            return web.Response(status=up.status, body=body, headers=out_headers)


@pytest_asyncio.fixture
async def hs_proxy(synapse: object) -> AsyncIterator[HomeserverProxy]:
    proxy = HomeserverProxy(synapse.url)  # type: ignore[attr-defined]
    await proxy.start()
    yield proxy
    await proxy.stop()
