"""The page's files: read once at start, served by name with their type (nothing else is)."""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

STATIC_DIR = Path(__file__).parent / "static"
STATIC_FILES = {
    "index.html": "text/html; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
    "view.js": "text/javascript; charset=utf-8",
    "sidebar.js": "text/javascript; charset=utf-8",
    "conversations.js": "text/javascript; charset=utf-8",
    "local.js": "text/javascript; charset=utf-8",
    "retry.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "theme.js": "text/javascript; charset=utf-8",
    "controls.js": "text/javascript; charset=utf-8",
    "code.js": "text/javascript; charset=utf-8",
    "code.css": "text/css; charset=utf-8",
    "edit.js": "text/javascript; charset=utf-8",
    "edit.css": "text/css; charset=utf-8",
    "search.js": "text/javascript; charset=utf-8",
    "search.css": "text/css; charset=utf-8",
    "settings.js": "text/javascript; charset=utf-8",
    "memfiles.js": "text/javascript; charset=utf-8",
    "settings.css": "text/css; charset=utf-8",
    "highlight.min.js": "text/javascript; charset=utf-8",
    "attach.js": "text/javascript; charset=utf-8",
    "attach.css": "text/css; charset=utf-8",
    "keep.js": "text/javascript; charset=utf-8",
    "media.js": "text/javascript; charset=utf-8",
    "record.js": "text/javascript; charset=utf-8",
}
VENDORED = {"highlight.min.js": "vendor/highlight.js/highlight.min.js"}
"""Served by name, kept under static/vendor/ with their licence (vendor/README.md: how made)."""


class StaticFiles:
    """The page's files in memory; any other name is not found."""

    def __init__(self) -> None:
        self._bodies = {name: (STATIC_DIR / VENDORED.get(name, name)).read_bytes()
                        for name in STATIC_FILES}

    def response(self, name: str) -> web.Response:
        body = self._bodies.get(name)
        if body is None:
            raise web.HTTPNotFound()
        return web.Response(
            body=body,
            headers={"Content-Type": STATIC_FILES[name], "Cache-Control": "no-cache"},
        )
