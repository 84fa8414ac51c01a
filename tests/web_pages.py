"""A local web site for the web tools' tests: one aiohttp app listening on 127.0.0.1 and on
127.0.0.2 (the tests allow 127.0.0.2 only), and a fake SearXNG.

Every request is recorded with the address it came in on, so a test can show that a refused
address was never asked; the endless body counts what it managed to send and says when the
reader went away.
"""

from __future__ import annotations

import asyncio
import json
import socket
import zlib
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

ALLOWED_HOST = "127.0.0.2"
"""The address tests list in tools.web.allow_private."""
REFUSED_HOST = "127.0.0.1"

ARTICLE = """<!doctype html>
<html><head><title>  The   Article\x07 </title>
<style>body { color: red }</style>
<script>var secret = "SCRIPT-TEXT";</script>
<link rel="stylesheet" href="/x.css"></head>
<body>
<h1>Main heading</h1>
<p>First paragraph with <a href="/docs/page?x=1">a relative link</a> and <b>bold</b> text.</p>
<h2>Lists</h2>
<ul><li>apple</li><li>pear</li></ul>
<ol><li>first</li><li>second</li></ol>
<pre><code>def hello():
    return 42
</code></pre>
<div hidden>HIDDEN-DIV</div>
<p style="display:none">HIDDEN-STYLE</p>
<noscript>NOSCRIPT-TEXT</noscript>
<form><input value="INPUT-VALUE"><button>BUTTON-TEXT</button></form>
<img src="data:image/png;base64,iVBORw0KGgo=" alt="inline picture">
</body></html>
"""


def bound(host: str) -> socket.socket:
    """A listening-ready TCP socket on ``host`` and a free port."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, 0))
    return sock


def deflated_zeros(megabytes: int) -> bytes:
    """``megabytes`` MB of zero bytes, deflated (zlib), made a megabyte at a time."""
    packer = zlib.compressobj(9)
    chunk = b"\0" * 1_000_000
    return b"".join(packer.compress(chunk) for _ in range(megabytes)) + packer.flush()


@dataclass
class Endless:
    """The state of the 50 MB body: bytes written, and whether the reader left first."""

    sent: int = 0
    reader_left: bool = False
    done: asyncio.Event = field(default_factory=asyncio.Event)


class Site:
    """The test site. ``url(path)`` is on the allowed address, ``url(path, REFUSED_HOST)``
    on the refused one; ``requests`` lists (address, path) of every request served."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str]] = []
        self.endless = Endless()
        self.release = asyncio.Event()
        """Set at stop: what the slow handlers wait for."""
        self.ports: dict[str, int] = {}
        self.pages: dict[str, tuple[str, bytes]] = {}
        """Extra pages a test adds: path -> (content type, body)."""
        app = web.Application()
        app.router.add_route("GET", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, handle_signals=False)

    async def start(self) -> None:
        await self._runner.setup()
        for host in (ALLOWED_HOST, REFUSED_HOST):
            sock = bound(host)
            await web.SockSite(self._runner, sock).start()
            self.ports[host] = sock.getsockname()[1]

    async def stop(self) -> None:
        self.release.set()
        await self._runner.cleanup()

    def url(self, path: str, host: str = ALLOWED_HOST) -> str:
        return f"http://{host}:{self.ports[host]}{path}"

    def served(self, host: str) -> list[str]:
        return [path for address, path in self.requests if address == host]

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        sockname = request.transport.get_extra_info("sockname") if request.transport else None
        address = sockname[0] if sockname else "?"
        path = request.path_qs
        self.requests.append((address, path))
        if request.path in self.pages:
            content_type, body = self.pages[request.path]
            return web.Response(body=body, headers={"Content-Type": content_type})
        if request.path == "/article":
            return web.Response(text=ARTICLE, content_type="text/html")
        if request.path.startswith("/hop/"):  # /hop/3 -> /hop/2 -> /hop/1 -> /hop/0 -> article
            left = int(request.path.rsplit("/", 1)[1])
            raise web.HTTPFound("/article" if left == 0 else f"/hop/{left - 1}")
        if request.path == "/to":  # /to?url=...: a redirect wherever the test says
            raise web.HTTPFound(request.query["url"])
        if request.path == "/endless":
            return await self._endless(request)
        if request.path == "/slow-body":
            response = web.StreamResponse(headers={"Content-Type": "text/plain"})
            await response.prepare(request)
            await response.write(b"the first part arrived\n")
            await self.release.wait()
            return response
        if request.path == "/slow-headers":
            await self.release.wait()
            return web.Response(text="too late")
        if request.path == "/bomb":  # 100 MB of zeros, deflated to about 100 kB
            return web.Response(body=deflated_zeros(100), headers={
                "Content-Type": "text/plain", "Content-Encoding": "deflate"})
        raise web.HTTPNotFound(text="no such page")

    async def _endless(self, request: web.Request) -> web.StreamResponse:
        """50 MB of text, streamed; stops when the reader goes away."""
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        line = b"all work and no play makes a dull page " * 1600 + b"\n"  # ~64 kB
        try:
            while self.endless.sent < 50_000_000:
                await response.write(line)
                self.endless.sent += len(line)
        except (ConnectionError, asyncio.CancelledError):
            self.endless.reader_left = True
        finally:
            self.endless.done.set()
        return response


class FakeSearxng:
    """SearXNG's /search?format=json, answering ``results`` (or ``status``) and recording
    each query."""

    def __init__(self) -> None:
        self.results: list[Any] = []
        self.status = 200
        self.queries: list[dict[str, str]] = []
        app = web.Application()
        app.router.add_get("/search", self._search)
        self._runner = web.AppRunner(app, handle_signals=False)
        self.port = 0

    async def start(self) -> None:
        await self._runner.setup()
        sock = bound(REFUSED_HOST)
        await web.SockSite(self._runner, sock).start()
        self.port = sock.getsockname()[1]

    @property
    def url(self) -> str:
        return f"http://{REFUSED_HOST}:{self.port}"

    async def stop(self) -> None:
        await self._runner.cleanup()

    async def _search(self, request: web.Request) -> web.Response:
        self.queries.append(dict(request.query))
        if self.status != 200:
            return web.Response(status=self.status, text="Forbidden")
        if request.query.get("format") != "json":
            return web.Response(text="<html>results as a page</html>", content_type="text/html")
        return web.Response(text=json.dumps({"query": request.query.get("q"),
                                             "results": self.results}),
                            content_type="application/json")
